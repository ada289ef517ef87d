//! etcd's own Go naming convention (`go.etcd.io/etcd/client/v3/naming`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    DecodeError, Format, Instance, Metadata, decode_json, one_segment_below, slash_prefix,
    validate_addr,
};

/// What a value that does not parse was expected to be.
const EXPECTED: &str = r#"an etcd-naming JSON value {"Op":0,"Addr":"host:port","Metadata":..}"#;

/// The wire format of etcd's Go naming package, the `etcd:///` resolver of grpc-go.
///
/// Keys are `<target>/<addr>`; values are
/// `{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}`.
///
/// Reading accepts a missing `Op` (a put is an add whatever it says), and `Metadata` as an
/// object, as a string holding a JSON object, or as any other value, which is opaque.
///
/// Writing puts `"Metadata":null` when there is no metadata, and otherwise a JSON *string*
/// holding the encoded object, because an object or array there panics etcd's 3.5 Go
/// resolver ("hash of unhashable type").
///
/// Discovery takes only the keys one segment below the target, `<target>/<addr>`: the keys
/// of a nested target (`greeter/admin/<addr>` under `greeter`) are skipped with a `debug!`.
/// etcd's Go resolver takes every key under `<target>/`, nested ones included; a Go
/// registration whose key has more than one segment after the target (which etcd's
/// `endpoints.Manager` allows, though the convention is `<target>/<addr>`) is therefore not
/// read here. Values carry no service name, so nothing else tells two targets apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdNaming;

impl EtcdNaming {
    /// The etcd naming format, the same value as the unit struct `EtcdNaming`: both forms work, like the
    /// `new()` of the other formats.
    #[must_use]
    pub const fn new() -> Self {
        EtcdNaming
    }
}

#[derive(Serialize)]
struct Encoded<'a> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: Option<String>,
}

#[derive(Deserialize)]
struct Decoded {
    #[serde(rename = "Addr")]
    addr: Option<String>,
    #[serde(rename = "Metadata", default)]
    metadata: Value,
}

impl Format for EtcdNaming {
    fn prefix(&self, service: &str) -> String {
        slash_prefix(service)
    }

    fn key(&self, service: &str, instance: &Instance, _lease_id: i64) -> String {
        format!("{}{}", self.prefix(service), instance.addr)
    }

    fn value(&self, _service: &str, instance: &Instance) -> Vec<u8> {
        let metadata = (!instance.metadata.is_empty())
            .then(|| Value::Object(instance.metadata.to_json()).to_string());
        let encoded = Encoded {
            op: 0,
            addr: &instance.addr,
            metadata,
        };
        serde_json::to_vec(&encoded).expect("a struct of strings always serialises")
    }

    fn decode(&self, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        let decoded: Decoded = decode_json(value, EXPECTED)?;
        let addr = decoded.addr.ok_or(DecodeError::MissingAddress)?;
        validate_addr(&addr)?;
        Ok(Instance {
            addr,
            tls: false,
            metadata: metadata_from(&decoded.metadata),
        })
    }

    fn decode_for(&self, service: &str, key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        one_segment_below(&self.prefix(service), key)?;
        self.decode(key, value)
    }
}

/// Reads metadata from an object, or from a string that holds an encoded object.
fn metadata_from(value: &Value) -> Metadata {
    match value {
        Value::Object(map) => Metadata::from_json(map),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => Metadata::from_json(&map),
            _ => Metadata::default(),
        },
        _ => Metadata::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_the_unit_struct() {
        let by_new = EtcdNaming::new();
        assert_eq!(format!("{by_new:?}"), format!("{:?}", EtcdNaming));
        assert_eq!(by_new.prefix("greeter"), EtcdNaming.prefix("greeter"));
    }

    fn decode(value: &str) -> Result<Instance, DecodeError> {
        EtcdNaming.decode("services/greeter/x", value.as_bytes())
    }

    #[test]
    fn decodes_the_go_value() {
        let i = decode(r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}"#).expect("decodes");
        assert_eq!(i, Instance::new("10.0.0.1:50051"));
    }

    #[test]
    fn op_may_be_missing_or_anything() {
        assert!(decode(r#"{"Addr":"10.0.0.1:50051"}"#).is_ok());
        assert!(decode(r#"{"Op":1,"Addr":"10.0.0.1:50051"}"#).is_ok());
    }

    #[test]
    fn reads_go_escapes_and_every_metadata_shape() {
        let i = decode(r#"{"Addr":"10.0.0.1:1","Metadata":{"zone":"a\u003cb\u0026c"}}"#)
            .expect("object");
        assert_eq!(i.metadata.zone.as_deref(), Some("a<b&c"));
        let i = decode(r#"{"Addr":"10.0.0.1:1","Metadata":"{\"weight\":10}"}"#).expect("string");
        assert_eq!(i.metadata.weight, Some(10));
        for opaque in [r#""plain""#, "42", "true", "[1,2]"] {
            let v = format!(r#"{{"Addr":"10.0.0.1:1","Metadata":{opaque}}}"#);
            assert!(decode(&v).expect("opaque").metadata.is_empty(), "{v}");
        }
    }

    #[test]
    fn writes_null_or_a_string_never_an_object() {
        let plain = EtcdNaming.value("s", &Instance::new("10.0.0.1:1"));
        assert_eq!(plain, br#"{"Op":0,"Addr":"10.0.0.1:1","Metadata":null}"#);
        let rich = EtcdNaming.value("s", &Instance::new("10.0.0.1:1").weight(10).zone("eu-1"));
        let v: Value = serde_json::from_slice(&rich).expect("json");
        let meta = v["Metadata"].as_str().expect("metadata is a string");
        assert_eq!(meta, r#"{"weight":10,"zone":"eu-1"}"#);
        assert_eq!(
            EtcdNaming.decode("k", &rich).expect("round trip"),
            Instance::new("10.0.0.1:1").weight(10).zone("eu-1")
        );
    }

    #[test]
    fn keys_sit_under_the_target_with_one_slash() {
        let i = Instance::new("10.0.0.1:1");
        assert_eq!(
            EtcdNaming.key("services/greeter/", &i, 0),
            "services/greeter/10.0.0.1:1"
        );
        assert_eq!(EtcdNaming.prefix("services/greeter"), "services/greeter/");
    }

    #[test]
    fn discovery_takes_only_keys_one_segment_below_the_prefix() {
        let format = EtcdNaming;
        let value = format.value("services/greeter", &Instance::new("10.0.0.1:1"));
        let mine = format.decode_for("services/greeter", "services/greeter/10.0.0.1:1", &value);
        assert_eq!(mine.expect("one segment below").addr, "10.0.0.1:1");
        let error = format
            .decode_for(
                "services/greeter",
                "services/greeter/admin/10.0.0.1:1",
                &value,
            )
            .expect_err("a nested service's key");
        assert!(error.is_other_service(), "{error}");
        let theirs = format.decode_for(
            "services/greeter/admin",
            "services/greeter/admin/10.0.0.1:1",
            &value,
        );
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
            "[]",
            r#"{"Addr":5}"#,
            r#"{"Addr":"nope"}"#,
            r#"{"Op":0}"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            EtcdNaming.decode("k", &[0xff, 0xfe]),
            Err(DecodeError::NotUtf8)
        ));
    }
}
