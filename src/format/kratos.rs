//! Kratos's etcd registry (`contrib/registry/etcd`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DecodeError, Format, Instance, Metadata, decode_json, validate_addr};

/// What a value that does not parse was expected to be.
const EXPECTED: &str =
    r#"a Kratos JSON instance {"id":..,"name":..,"endpoints":["grpc://host:port"]}"#;

/// The namespace Kratos registers under by default.
const DEFAULT_NAMESPACE: &str = "/microservices";

/// The format of Kratos's etcd registry, the `ServiceInstance` JSON.
///
/// The `service` is the Kratos service name. Keys are `/microservices/<name>/<id>`; values
/// are
/// `{"id":"..","name":"..","version":"..","metadata":{..} or null,"endpoints":["http://..","grpc://10.0.0.5:9000"]}`.
///
/// Discovery takes only the instances whose `name` is the service, as Kratos's own registry
/// does: the listing of `/microservices/greeter/` also holds the instances of a service
/// named `greeter/admin`, which are skipped with a `debug!`, as is an instance with no
/// `name`. The key is not looked at: an instance named `greeter` counts wherever its key
/// lies under the prefix.
///
/// Reading takes the host and port of the first `grpc://` or `grpcs://` endpoint, ignoring
/// its path and query string; `grpcs://` means TLS. Kratos before 2.3 marked TLS with a
/// `grpc://host:port?isSecure=true` query instead, and that is honoured too. An instance
/// with no gRPC endpoint is skipped with [`DecodeError::NoGrpcEndpoint`]. `version` becomes
/// [`Metadata::version`], and the `metadata` map becomes the rest of the [`Metadata`].
///
/// Writing puts one `grpc://<addr>` endpoint (`grpcs://` when [`Instance::tls`] is set),
/// the service name, the version (empty when there is none, as Kratos writes it) and the
/// other metadata as text, because Kratos reads it as Go's `map[string]string`. The id is the
/// one set with [`id`](Kratos::id), or else the instance's address, which is unique per
/// listening server and stable across restarts on the same port.
///
/// ```
/// use tonic_etcd::{Format, Instance, Kratos};
///
/// let instance = Instance::new("10.0.0.5:9000").version("1.2.0");
/// assert_eq!(
///     Kratos::new().key("greeter", &instance, 0),
///     "/microservices/greeter/10.0.0.5:9000"
/// );
/// let value = br#"{"id":"a","name":"greeter","version":"1.2.0","metadata":null,
///     "endpoints":["http://10.0.0.5:8000","grpc://10.0.0.5:9000?isSecure=false"]}"#;
/// assert_eq!(Kratos::new().decode("/microservices/greeter/a", value).ok(), Some(instance));
/// ```
#[derive(Debug, Clone)]
pub struct Kratos {
    namespace: String,
    id: Option<String>,
}

impl Default for Kratos {
    fn default() -> Self {
        Kratos {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            id: None,
        }
    }
}

impl Kratos {
    /// The Kratos format, in the default namespace `/microservices`.
    #[must_use]
    pub fn new() -> Self {
        Kratos::default()
    }

    /// The key namespace, like Kratos's `etcd.Namespace` option. Default: `/microservices`.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The instance id written in the key and the value. It must be unique among the
    /// instances of the service. Default: the instance's address.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

#[derive(Serialize)]
struct Encoded<'a> {
    id: &'a str,
    name: &'a str,
    version: &'a str,
    metadata: Option<BTreeMap<String, String>>,
    endpoints: [String; 1],
}

#[derive(Deserialize)]
struct Decoded {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

impl Format for Kratos {
    fn prefix(&self, service: &str) -> String {
        let namespace = self.namespace.trim_end_matches('/');
        format!("{namespace}/{}/", service.trim_matches('/'))
    }

    fn key(&self, service: &str, instance: &Instance, _lease_id: i64) -> String {
        let id = self.id.as_deref().unwrap_or(&instance.addr);
        format!("{}{id}", self.prefix(service))
    }

    fn value(&self, service: &str, instance: &Instance) -> Vec<u8> {
        let mut metadata = instance.metadata.to_strings();
        metadata.remove("version");
        let scheme = if instance.tls { "grpcs" } else { "grpc" };
        let encoded = Encoded {
            id: self.id.as_deref().unwrap_or(&instance.addr),
            name: service.trim_matches('/'),
            version: instance.metadata.version.as_deref().unwrap_or(""),
            metadata: (!metadata.is_empty()).then_some(metadata),
            endpoints: [format!("{scheme}://{}", instance.addr)],
        };
        serde_json::to_vec(&encoded).expect("a struct of strings always serialises")
    }

    fn decode(&self, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        decode_json::<Decoded>(value, EXPECTED)?.into_instance()
    }

    /// Takes only the instances whose `name` is `service` (give or take surrounding
    /// slashes), like Kratos's registry: its listing of `/microservices/greeter` also holds
    /// the instances of `greeter/admin`.
    fn decode_for(&self, service: &str, _key: &str, value: &[u8]) -> Result<Instance, DecodeError> {
        let decoded: Decoded = decode_json(value, EXPECTED)?;
        let service = service.trim_matches('/');
        let name = decoded.name.as_deref().unwrap_or_default();
        if name != service {
            return Err(DecodeError::OtherService {
                name: name.to_owned(),
                service: service.to_owned(),
            });
        }
        decoded.into_instance()
    }
}

impl Decoded {
    fn into_instance(self) -> Result<Instance, DecodeError> {
        let decoded = self;
        let endpoints = decoded.endpoints.unwrap_or_default();
        let (addr, tls) = grpc_endpoint(&endpoints)?;
        let mut metadata = decoded
            .metadata
            .as_ref()
            .map(Metadata::from_json)
            .unwrap_or_default();
        if let Some(version) = decoded.version.filter(|v| !v.is_empty()) {
            metadata.version = Some(version);
        }
        Ok(Instance {
            addr: addr.to_owned(),
            tls,
            metadata,
        })
    }
}

/// The address of the first gRPC endpoint, and whether it wants TLS.
fn grpc_endpoint(endpoints: &[String]) -> Result<(&str, bool), DecodeError> {
    for endpoint in endpoints {
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            continue;
        };
        let tls = if scheme.eq_ignore_ascii_case("grpc") {
            false
        } else if scheme.eq_ignore_ascii_case("grpcs") {
            true
        } else {
            continue;
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        validate_addr(authority)?;
        return Ok((authority, tls || legacy_secure(tail)));
    }
    Err(DecodeError::NoGrpcEndpoint)
}

/// Whether the path-and-query `tail` carries Kratos's old `isSecure=true` (Go's
/// `strconv.ParseBool` spellings of true).
fn legacy_secure(tail: &str) -> bool {
    let Some((_, query)) = tail.split_once('?') else {
        return false;
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("isSecure="))
        .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(value: &str) -> Result<Instance, DecodeError> {
        Kratos::new().decode("/microservices/greeter/a", value.as_bytes())
    }

    fn with_endpoints(endpoints: &str) -> String {
        format!(
            r#"{{"id":"a","name":"greeter","version":"","metadata":null,"endpoints":{endpoints}}}"#
        )
    }

    #[test]
    fn takes_the_first_grpc_endpoint_and_ignores_its_query() {
        let v = with_endpoints(
            r#"["http://10.0.0.5:8000","grpc://10.0.0.5:9000?isSecure=false","grpc://10.0.0.6:1"]"#,
        );
        let i = decode(&v).expect("decodes");
        assert_eq!(i, Instance::new("10.0.0.5:9000"));
        let i = decode(&with_endpoints(r#"["GRPC://[::1]:9000/path#frag"]"#)).expect("ipv6");
        assert_eq!(i.addr, "[::1]:9000");
    }

    #[test]
    fn grpcs_or_legacy_is_secure_means_tls() {
        let i = decode(&with_endpoints(r#"["grpcs://10.0.0.5:9443"]"#)).expect("grpcs");
        assert!(i.tls);
        let v = with_endpoints(r#"["grpc://10.0.0.5:9443?x=1&isSecure=true"]"#);
        assert!(decode(&v).expect("legacy").tls);
        let v = with_endpoints(r#"["grpc://10.0.0.5:9443?isSecure=nope"]"#);
        assert!(!decode(&v).expect("not a bool").tls);
    }

    #[test]
    fn skips_an_instance_with_no_grpc_endpoint() {
        for endpoints in [
            "[]",
            r#"["http://10.0.0.5:8000"]"#,
            r#"["grpc:10.0.0.5:1"]"#,
        ] {
            let error = decode(&with_endpoints(endpoints)).expect_err(endpoints);
            assert!(matches!(error, DecodeError::NoGrpcEndpoint), "{endpoints}");
        }
        assert!(matches!(decode("{}"), Err(DecodeError::NoGrpcEndpoint)));
        let bad = decode(&with_endpoints(r#"["grpc://user@10.0.0.5:1"]"#));
        assert!(matches!(bad, Err(DecodeError::InvalidAddress { .. })));
    }

    #[test]
    fn reads_version_and_metadata() {
        let v = r#"{"id":"a","name":"greeter","version":"v1.2.0",
            "metadata":{"weight":"10","zone":"eu-1","team":"core"},
            "endpoints":["grpc://10.0.0.5:9000"]}"#;
        let i = decode(v).expect("decodes");
        assert_eq!(i.metadata.version.as_deref(), Some("v1.2.0"));
        assert_eq!(i.metadata.weight, Some(10));
        assert_eq!(i.metadata.zone.as_deref(), Some("eu-1"));
        assert_eq!(i.metadata.attributes["team"], "core");
    }

    #[test]
    fn writes_what_kratos_reads() {
        let i = Instance::new("10.0.0.5:9000")
            .weight(10)
            .version("1.0")
            .tls(true);
        let value = Kratos::new().value("greeter", &i);
        let json: Value = serde_json::from_slice(&value).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "id": "10.0.0.5:9000",
                "name": "greeter",
                "version": "1.0",
                "metadata": {"weight": "10"},
                "endpoints": ["grpcs://10.0.0.5:9000"],
            })
        );
        assert_eq!(Kratos::new().decode("k", &value).expect("round trip"), i);
        let plain = Kratos::new().value("greeter", &Instance::new("10.0.0.5:9000"));
        assert!(plain.windows(15).any(|w| w == br#""metadata":null"#));
    }

    #[test]
    fn keys_sit_under_the_namespace() {
        let i = Instance::new("10.0.0.5:9000");
        assert_eq!(Kratos::new().prefix("greeter"), "/microservices/greeter/");
        assert_eq!(
            Kratos::new().id("u-1").key("greeter", &i, 5),
            "/microservices/greeter/u-1"
        );
        let custom = Kratos::new().namespace("/apps/");
        assert_eq!(custom.key("greeter/", &i, 5), "/apps/greeter/10.0.0.5:9000");
    }

    #[test]
    fn discovery_takes_only_instances_named_after_the_service() {
        let value = |name: &str| {
            format!(r#"{{"id":"a","name":"{name}","endpoints":["grpc://10.0.0.5:9000"]}}"#)
        };
        let k = Kratos::new();
        let mine = k.decode_for(
            "greeter",
            "/microservices/greeter/a",
            value("greeter").as_bytes(),
        );
        assert_eq!(mine.expect("own name").addr, "10.0.0.5:9000");
        let slashed = k.decode_for(
            "/greeter/",
            "/microservices/greeter/a",
            value("greeter").as_bytes(),
        );
        assert!(slashed.is_ok(), "surrounding slashes do not count");
        let nested = value("greeter/admin");
        let error = k
            .decode_for(
                "greeter",
                "/microservices/greeter/admin/a",
                nested.as_bytes(),
            )
            .expect_err("a nested service's instance");
        assert!(error.is_other_service(), "{error}");
        assert!(error.to_string().contains("greeter/admin"), "{error}");
        // The nested service itself takes it.
        assert!(
            k.decode_for("greeter/admin", "k", nested.as_bytes())
                .is_ok()
        );
        let unnamed = br#"{"id":"a","endpoints":["grpc://10.0.0.5:9000"]}"#;
        let error = k.decode_for("greeter", "k", unnamed).expect_err("no name");
        assert!(error.is_other_service(), "{error}");
        // Plain `decode` does not look at the name.
        assert!(k.decode("k", unnamed).is_ok());
        // A broken value of another service is still a broken value.
        let bad = k.decode_for("greeter", "k", b"{").expect_err("bad json");
        assert!(!bad.is_other_service());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "null",
            "[]",
            "{",
            r#"{"endpoints":"grpc://a:1"}"#,
            r#"{"metadata":5}"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            Kratos::new().decode("k", b"\xff"),
            Err(DecodeError::NotUtf8)
        ));
    }
}
