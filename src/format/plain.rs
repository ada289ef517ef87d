//! The plain address format: the value is the address and nothing else.

use super::{DecodeError, Format, Instance, one_segment_below, slash_prefix, validate_addr};

/// The simplest format: keys `<prefix>/<addr>`, values the bare address, `10.0.0.1:50051`.
///
/// Discovery takes only the keys one segment below the prefix: those of a nested prefix
/// (`<prefix>/admin/<addr>`) are skipped with a `debug!`.
///
/// It carries no metadata and no TLS flag. Reading trims ASCII whitespace around the value,
/// so a value put with a trailing newline still decodes.
///
/// ```
/// use tonic_etcd::{Format, Instance, PlainAddr};
///
/// let instance = Instance::new("10.0.0.1:50051");
/// assert_eq!(PlainAddr.key("greeter", &instance, 0), "greeter/10.0.0.1:50051");
/// assert_eq!(PlainAddr.value("greeter", &instance), b"10.0.0.1:50051");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainAddr;

impl PlainAddr {
    /// The plain address format, the same value as the unit struct `PlainAddr`: both forms work, like the
    /// `new()` of the other formats.
    #[must_use]
    pub const fn new() -> Self {
        PlainAddr
    }
}

impl Format for PlainAddr {
    fn prefix(&self, service: &str) -> String {
        slash_prefix(service)
    }

    fn key(&self, service: &str, instance: &Instance, _lease_id: i64) -> String {
        format!("{}{}", self.prefix(service), instance.addr)
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

/// Decodes a value that is a bare `host:port`, give or take surrounding whitespace.
pub(super) fn decode_addr_text(value: &[u8]) -> Result<Instance, DecodeError> {
    let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
    let addr = text.trim_ascii();
    if addr.is_empty() {
        return Err(DecodeError::MissingAddress);
    }
    validate_addr(addr)?;
    Ok(Instance::new(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_the_unit_struct() {
        let by_new = PlainAddr::new();
        assert_eq!(format!("{by_new:?}"), format!("{:?}", PlainAddr));
        assert_eq!(by_new.prefix("greeter"), PlainAddr.prefix("greeter"));
    }

    #[test]
    fn decodes_a_bare_address() {
        let i = PlainAddr.decode("s/x", b"10.0.0.1:50051").expect("decodes");
        assert_eq!(i, Instance::new("10.0.0.1:50051"));
        let i = PlainAddr.decode("s/x", b" [::1]:80\n").expect("trimmed");
        assert_eq!(i.addr, "[::1]:80");
    }

    #[test]
    fn writes_the_address_under_the_prefix() {
        let i = Instance::new("10.0.0.1:1").weight(3);
        assert_eq!(PlainAddr.key("s/", &i, 9), "s/10.0.0.1:1");
        assert_eq!(PlainAddr.value("s", &i), b"10.0.0.1:1");
        assert_eq!(PlainAddr.prefix("s"), "s/");
    }

    #[test]
    fn discovery_takes_only_keys_one_segment_below_the_prefix() {
        let format = PlainAddr;
        let value = format.value("plain/greeter", &Instance::new("10.0.0.1:1"));
        let mine = format.decode_for("plain/greeter", "plain/greeter/10.0.0.1:1", &value);
        assert_eq!(mine.expect("one segment below").addr, "10.0.0.1:1");
        let error = format
            .decode_for("plain/greeter", "plain/greeter/admin/10.0.0.1:1", &value)
            .expect_err("a nested service's key");
        assert!(error.is_other_service(), "{error}");
        let theirs = format.decode_for(
            "plain/greeter/admin",
            "plain/greeter/admin/10.0.0.1:1",
            &value,
        );
        assert!(theirs.is_ok(), "the nested service takes its own key");
        assert!(
            format
                .decode("plain/greeter/admin/10.0.0.1:1", &value)
                .is_ok(),
            "decode alone does not look"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            PlainAddr.decode("k", b""),
            Err(DecodeError::MissingAddress)
        ));
        assert!(matches!(
            PlainAddr.decode("k", b"\xff"),
            Err(DecodeError::NotUtf8)
        ));
        for bad in [
            "10.0.0.1",
            "http://10.0.0.1:80",
            r#"{"Addr":"10.0.0.1:80"}"#,
        ] {
            assert!(PlainAddr.decode("k", bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
