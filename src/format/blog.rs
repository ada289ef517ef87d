//! The format of the widely copied "service discovery with etcd" blog post.

use serde::{Deserialize, Serialize};

use super::{DecodeError, Format, Instance, decode_json, one_segment_below, validate_addr};

/// What a value that does not parse was expected to be.
const EXPECTED: &str = r#"a blog-format JSON value {"ID":..,"IP":"host:port"}"#;

/// The blog post's format: values `{"ID":1,"IP":"127.0.0.1:8080"}`.
///
/// The `service` is the name under `services/`. The original code wrote a single key,
/// `services/<name>`, so instances overwrote each other. This format writes one key per
/// instance instead, `services/<name>/<id>`, and reads every key under `services/<name>/`.
/// The original single key is *not* read: it lies outside that prefix, and widening the
/// prefix would also match `services/<name>-admin/...`.
///
/// Discovery takes only the keys one segment below `services/<name>/`: those of a nested
/// name (`services/greeter/admin/<id>` under `greeter`) are skipped with a `debug!`. Values
/// carry no service name, so nothing else tells two names apart.
///
/// The id in the key is the one set with [`id`](Blog::id), or else the instance's address.
/// `ID` in the value is that id, or 0; reading ignores it and takes the address from `IP`.
/// There is no metadata and no TLS flag.
///
/// ```
/// use tonic_etcd::{Blog, Format, Instance};
///
/// let instance = Instance::new("127.0.0.1:8080");
/// assert_eq!(Blog::new().key("greeter", &instance, 0), "services/greeter/127.0.0.1:8080");
/// assert_eq!(Blog::new().id(1).value("greeter", &instance), br#"{"ID":1,"IP":"127.0.0.1:8080"}"#);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Blog {
    id: Option<i64>,
}

impl Blog {
    /// The blog format, with keys named after the address.
    #[must_use]
    pub fn new() -> Self {
        Blog::default()
    }

    /// The instance id written in the key and as `ID`. It must be unique among the instances
    /// of the service. Default: the address in the key, and `ID` 0.
    #[must_use]
    pub fn id(mut self, id: i64) -> Self {
        self.id = Some(id);
        self
    }
}

#[derive(Serialize)]
struct Encoded<'a> {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "IP")]
    ip: &'a str,
}

#[derive(Deserialize)]
struct Decoded {
    #[serde(rename = "IP")]
    ip: Option<String>,
}

impl Format for Blog {
    fn prefix(&self, service: &str) -> String {
        format!("services/{}/", service.trim_matches('/'))
    }

    fn key(&self, service: &str, instance: &Instance, _lease_id: i64) -> String {
        match self.id {
            Some(id) => format!("{}{id}", self.prefix(service)),
            None => format!("{}{}", self.prefix(service), instance.addr),
        }
    }

    fn value(&self, _service: &str, instance: &Instance) -> Vec<u8> {
        let encoded = Encoded {
            id: self.id.unwrap_or(0),
            ip: &instance.addr,
        };
        serde_json::to_vec(&encoded).expect("a number and a string always serialise")
    }

    fn decode(&self, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        let decoded: Decoded = decode_json(value, EXPECTED)?;
        let addr = decoded.ip.ok_or(DecodeError::MissingAddress)?;
        validate_addr(&addr)?;
        Ok(Instance::new(addr))
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
    fn decodes_the_blog_value() {
        let i = Blog::new()
            .decode("services/greeter/1", br#"{"ID":1,"IP":"127.0.0.1:8080"}"#)
            .expect("decodes");
        assert_eq!(i, Instance::new("127.0.0.1:8080"));
        let i = Blog::new()
            .decode("services/greeter/x", br#"{"IP":"[::1]:1","Extra":[1]}"#)
            .expect("ID and unknown fields are ignored");
        assert_eq!(i.addr, "[::1]:1");
    }

    #[test]
    fn writes_one_key_per_instance() {
        let a = Instance::new("127.0.0.1:8080");
        let b = Instance::new("127.0.0.1:8081");
        assert_ne!(
            Blog::new().key("greeter", &a, 1),
            Blog::new().key("greeter", &b, 1)
        );
        assert_eq!(
            Blog::new().id(7).key("/greeter/", &a, 1),
            "services/greeter/7"
        );
        assert_eq!(Blog::new().prefix("greeter"), "services/greeter/");
        assert_eq!(
            Blog::new().value("greeter", &a),
            br#"{"ID":0,"IP":"127.0.0.1:8080"}"#
        );
    }

    #[test]
    fn discovery_takes_only_keys_one_segment_below_the_prefix() {
        let format = Blog::new();
        let value = format.value("greeter", &Instance::new("10.0.0.1:1"));
        let mine = format.decode_for("greeter", "services/greeter/10.0.0.1:1", &value);
        assert_eq!(mine.expect("one segment below").addr, "10.0.0.1:1");
        let error = format
            .decode_for("greeter", "services/greeter/admin/10.0.0.1:1", &value)
            .expect_err("a nested service's key");
        assert!(error.is_other_service(), "{error}");
        let theirs =
            format.decode_for("greeter/admin", "services/greeter/admin/10.0.0.1:1", &value);
        assert!(theirs.is_ok(), "the nested service takes its own key");
        assert!(
            format
                .decode("services/greeter/admin/10.0.0.1:1", &value)
                .is_ok(),
            "decode alone does not look"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"ID":1}"#,
            r#"{"IP":1}"#,
            r#"{"IP":"127.0.0.1"}"#,
        ] {
            assert!(
                Blog::new().decode("k", bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            Blog::new().decode("k", b"\xff"),
            Err(DecodeError::NotUtf8)
        ));
    }
}
