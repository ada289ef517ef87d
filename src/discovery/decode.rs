//! Turning raw registry changes into endpoint changes, per subscriber.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Endpoint;
use tower::discover::Change;
use tracing::{debug, warn};

use super::diff::RawChange;
use super::entries::Entries;
use super::{Discovered, EndpointHook};
use crate::format::{DecodeError, Format, Instance};

/// How an instance becomes an [`Endpoint`]: the scheme and TLS, then the user's hook.
#[derive(Clone, Default)]
pub(super) struct EndpointRecipe {
    pub(super) hook: Option<EndpointHook>,
    /// TLS for every endpoint, whatever the instance says.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Why a value is not announced.
#[derive(Debug, thiserror::Error)]
enum Skip {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[cfg(feature = "tls")]
    #[error("cannot use the tls configuration for this instance")]
    Tls(#[source] tonic::transport::Error),
}

impl EndpointRecipe {
    /// The endpoint for `instance`: `https://<addr>` with TLS if the recipe has a TLS
    /// configuration or the instance asks for TLS, `http://<addr>` otherwise, with a 5 s
    /// connect timeout; then the hook, if any.
    fn endpoint(&self, instance: &Instance) -> Result<Endpoint, Skip> {
        let tls = self.uses_tls(instance);
        let scheme = if tls { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", instance.addr))
            .map_err(|_| DecodeError::InvalidAddress {
                addr: instance.addr.clone(),
                reason: "not a valid uri authority",
            })?
            .connect_timeout(Duration::from_secs(5));
        let endpoint = if tls {
            self.with_tls(endpoint)?
        } else {
            endpoint
        };
        Ok(match &self.hook {
            Some(hook) => hook(endpoint, instance),
            None => endpoint,
        })
    }

    /// Whether the endpoint for `instance` is the default one: `http://<addr>`, no hook.
    fn is_plain(&self, instance: &Instance) -> bool {
        self.hook.is_none() && !self.uses_tls(instance)
    }

    #[cfg(feature = "tls")]
    fn uses_tls(&self, instance: &Instance) -> bool {
        self.tls.is_some() || instance.tls
    }

    #[cfg(not(feature = "tls"))]
    fn uses_tls(&self, instance: &Instance) -> bool {
        instance.tls
    }

    /// Sets the TLS configuration; an instance that asks for TLS when none is configured
    /// trusts the roots of tonic's root-store features, if any is enabled.
    #[cfg(feature = "tls")]
    fn with_tls(&self, endpoint: Endpoint) -> Result<Endpoint, Skip> {
        let config = self
            .tls
            .clone()
            .unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_enabled_roots());
        endpoint.tls_config(config).map_err(Skip::Tls)
    }

    /// Without the `tls` feature tonic cannot speak TLS: the `https://` endpoint is kept,
    /// so that the instance shows, but calls to it fail.
    #[cfg(not(feature = "tls"))]
    fn with_tls(&self, endpoint: Endpoint) -> Result<Endpoint, Skip> {
        warn!(
            uri = %endpoint.uri(),
            "instance asks for tls, but tonic-etcd is built without its `tls` feature: calls to it will fail"
        );
        Ok(endpoint)
    }
}

/// Decodes raw changes with one format, keeping the values that decoded.
pub(super) struct Decoder {
    format: Arc<dyn Format>,
    /// The service discovered: keys and values of other services under its prefix are
    /// skipped ([`Format::decode_for`]).
    service: String,
    recipe: EndpointRecipe,
    /// The keys announced as endpoints, with the values they were decoded from: entries
    /// shared with the engine, not copies.
    good: Entries,
}

impl Decoder {
    pub(super) fn new(format: Arc<dyn Format>, service: String, recipe: EndpointRecipe) -> Self {
        Decoder {
            format,
            service,
            recipe,
            good: Entries::new(),
        }
    }

    /// How many endpoints are announced.
    pub(super) fn len(&self) -> usize {
        self.good.len()
    }

    /// The endpoint change for a raw change, if any:
    ///
    /// - a put of a new or changed value that decodes is an insert;
    /// - a put that does not decode is skipped with a warning naming the key, and the
    ///   endpoint the key had before, if any, stays;
    /// - a put of another service's instance (a nested service's key) is skipped the same
    ///   way, with a `debug!`;
    /// - a delete of an announced key is a remove.
    pub(super) fn apply(&mut self, change: RawChange) -> Option<Change<String, Discovered>> {
        match change {
            RawChange::Put(entry) => {
                let key = entry.key();
                if self.good.get(key) == Some(&entry) {
                    return None;
                }
                match self.endpoint_for(key, entry.value()) {
                    Ok(discovered) => {
                        debug!(key, addr = %discovered.instance.addr, "endpoint inserted");
                        let key = key.to_owned();
                        self.good.insert(entry);
                        Some(Change::Insert(key, discovered))
                    }
                    Err(Skip::Decode(error)) if error.is_other_service() => {
                        debug!(key, service = %self.service, reason = %error, "skipping another service's instance");
                        None
                    }
                    Err(error) => {
                        warn!(key, error = %crate::error::Chain(&error), "skipping undecodable value");
                        None
                    }
                }
            }
            RawChange::Delete(key) => {
                self.good.remove(&key)?;
                debug!(key, "endpoint removed");
                Some(Change::Remove(key))
            }
        }
    }

    /// Decodes a registry value and builds the endpoint for it.
    fn endpoint_for(&self, key: &str, value: &[u8]) -> Result<Discovered, Skip> {
        let instance = self.format.decode_for(&self.service, key, value)?;
        let endpoint = self.recipe.endpoint(&instance)?;
        let plain = self.recipe.is_plain(&instance);
        Ok(Discovered {
            endpoint,
            instance,
            plain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EtcdNaming;

    fn put(key: &str, value: &str) -> RawChange {
        RawChange::Put(crate::discovery::entries::entry(key, value))
    }

    const GOOD: &str = r#"{"Addr":"127.0.0.1:1"}"#;
    const OTHER: &str = r#"{"Addr":"127.0.0.1:2"}"#;

    #[test]
    fn a_bad_value_keeps_the_previous_endpoint() {
        let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
        assert!(matches!(
            d.apply(put("s/a", GOOD)),
            Some(Change::Insert(..))
        ));
        assert!(d.apply(put("s/a", "garbage")).is_none());
        // Back to the value already announced: nothing to do.
        assert!(d.apply(put("s/a", GOOD)).is_none());
        assert!(matches!(d.apply(put("s/a", OTHER)), Some(Change::Insert(k, _)) if k == "s/a"));
        assert!(matches!(
            d.apply(RawChange::Delete("s/a".into())),
            Some(Change::Remove(_))
        ));
    }

    #[test]
    fn a_bad_key_is_never_announced_or_removed() {
        let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
        assert!(d.apply(put("s/bad", "{}")).is_none());
        assert!(d.apply(RawChange::Delete("s/bad".into())).is_none());
    }

    #[test]
    fn a_nested_service_key_is_never_announced_or_removed() {
        let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), EndpointRecipe::default());
        assert!(d.apply(put("s/admin/127.0.0.1:1", GOOD)).is_none());
        assert!(d.apply(put("s/127.0.0.1:2", OTHER)).is_some());
        assert!(
            d.apply(RawChange::Delete("s/admin/127.0.0.1:1".into()))
                .is_none()
        );
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn the_hook_shapes_the_endpoint() {
        let hook: EndpointHook =
            Arc::new(|e: Endpoint, _: &crate::Instance| e.user_agent("t").expect("valid"));
        // Without the `tls` feature, `hook` is the only field.
        #[allow(clippy::needless_update)]
        let recipe = EndpointRecipe {
            hook: Some(hook),
            ..EndpointRecipe::default()
        };
        let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), recipe);
        assert!(d.apply(put("s/a", GOOD)).is_some());
    }

    fn uri_of(change: Option<Change<String, Discovered>>) -> String {
        match change {
            Some(Change::Insert(_, d)) => d.endpoint.uri().to_string(),
            other => panic!("expected an insert, got {other:?}"),
        }
    }

    #[test]
    fn an_instance_that_asks_for_tls_gets_https() {
        let mut d = Decoder::new(
            Arc::new(crate::Kratos::new()),
            "s".into(),
            EndpointRecipe::default(),
        );
        let value = r#"{"id":"a","name":"s","endpoints":["grpcs://127.0.0.1:9443"]}"#;
        let uri = uri_of(d.apply(put("/microservices/s/a", value)));
        assert_eq!(uri, "https://127.0.0.1:9443/");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_configuration_makes_every_endpoint_https() {
        let recipe = EndpointRecipe {
            tls: Some(tonic::transport::ClientTlsConfig::new()),
            ..EndpointRecipe::default()
        };
        let mut d = Decoder::new(Arc::new(EtcdNaming), "s".into(), recipe);
        assert_eq!(uri_of(d.apply(put("s/a", GOOD))), "https://127.0.0.1:1/");
    }
}
