//! How a decoded instance becomes an [`Endpoint`]: the scheme, TLS, then the user's hook.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Endpoint;
#[cfg(not(feature = "tls"))]
use tracing::warn;

use crate::format::{DecodeError, Instance};

/// Turns an instance into a [`Endpoint`]: a hook to set timeouts, TLS and the like.
pub(super) type EndpointHook = Arc<dyn Fn(Endpoint, &Instance) -> Endpoint + Send + Sync>;

/// A decoded instance and the endpoint built for it.
#[derive(Debug, Clone)]
pub(crate) struct Discovered {
    pub(crate) endpoint: Endpoint,
    pub(crate) instance: Instance,
    /// How the crate's own balancer connects to it.
    pub(crate) route: Route,
}

/// How the crate's own balancer connects to an instance.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// By itself, in plain text: the endpoint has the default settings (`http://<addr>`,
    /// a 5 s connect timeout, no TLS, no hook).
    Plain,
    /// By itself, over TLS with the crate's own [`TlsConfig`](crate::tls::TlsConfig), and
    /// otherwise the default settings.
    #[cfg(feature = "tls")]
    Tls(crate::tls::Connector),
    /// Through tonic's `Channel` to the endpoint, which honours every setting: the user's
    /// hook, or tonic's TLS configuration.
    Tonic,
}

/// How an instance becomes an [`Endpoint`]: the scheme and TLS, then the user's hook.
#[derive(Clone, Default)]
pub(super) struct EndpointRecipe {
    pub(super) hook: Option<EndpointHook>,
    /// TLS for every endpoint, whatever the instance says.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<BackendTls>,
}

/// The TLS configuration of every endpoint.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(super) enum BackendTls {
    /// tonic's own, which is opaque: only tonic's channel can use it.
    Tonic(tonic::transport::ClientTlsConfig),
    /// The crate's own: the same settings for tonic's channel, and the rustls
    /// configuration of the balancer's own connections, parsed once (or why it is invalid).
    Own {
        tonic: tonic::transport::ClientTlsConfig,
        connector: Result<crate::tls::Connector, String>,
    },
}

#[cfg(feature = "tls")]
impl From<crate::tls::TlsConfig> for BackendTls {
    fn from(config: crate::tls::TlsConfig) -> Self {
        BackendTls::Own {
            tonic: config.tonic(),
            connector: config.connector(),
        }
    }
}

/// Why a value is not announced.
#[derive(Debug, thiserror::Error)]
pub(super) enum Skip {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[cfg(feature = "tls")]
    #[error("cannot use the tls configuration for this instance")]
    Tls(#[source] tonic::transport::Error),
    #[cfg(feature = "tls")]
    #[error("invalid tls configuration: {0}")]
    InvalidTls(String),
}

impl EndpointRecipe {
    /// The endpoint for `instance`: `https://<addr>` with TLS if the recipe has a TLS
    /// configuration or the instance asks for TLS, `http://<addr>` otherwise, with a 5 s
    /// connect timeout; then the hook, if any.
    pub(super) fn endpoint(&self, instance: &Instance) -> Result<Endpoint, Skip> {
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

    /// How the balancer connects to `instance`, whose endpoint has been built: by itself
    /// unless there is a hook or TLS that only tonic can speak (tonic's configuration, or
    /// an instance that asks for TLS when none is configured: tonic's enabled roots).
    pub(super) fn route(&self, instance: &Instance) -> Route {
        match (&self.hook, self.uses_tls(instance)) {
            (Some(_), _) => Route::Tonic,
            (None, false) => Route::Plain,
            (None, true) => self.tls_route(),
        }
    }

    #[cfg(feature = "tls")]
    fn tls_route(&self) -> Route {
        match &self.tls {
            Some(BackendTls::Own {
                connector: Ok(connector),
                ..
            }) => Route::Tls(connector.clone()),
            _ => Route::Tonic,
        }
    }

    #[cfg(not(feature = "tls"))]
    fn tls_route(&self) -> Route {
        Route::Tonic
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
        let config = match &self.tls {
            Some(BackendTls::Tonic(config)) => config.clone(),
            Some(BackendTls::Own { tonic, connector }) => match connector {
                Ok(_) => tonic.clone(),
                Err(reason) => return Err(Skip::InvalidTls(reason.clone())),
            },
            None => tonic::transport::ClientTlsConfig::new().with_enabled_roots(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(tls: bool) -> Instance {
        Instance::new("127.0.0.1:1").tls(tls)
    }

    fn hook() -> Option<EndpointHook> {
        Some(Arc::new(|e: Endpoint, _: &Instance| e))
    }

    #[test]
    fn only_a_default_endpoint_is_connected_by_the_balancer_in_plain_text() {
        let recipe = EndpointRecipe::default();
        assert!(matches!(recipe.route(&instance(false)), Route::Plain));
        // An instance that asks for TLS, with none configured: tonic's enabled roots.
        assert!(matches!(recipe.route(&instance(true)), Route::Tonic));
        #[allow(clippy::needless_update)]
        let recipe = EndpointRecipe {
            hook: hook(),
            ..EndpointRecipe::default()
        };
        assert!(matches!(recipe.route(&instance(false)), Route::Tonic));
    }

    #[cfg(feature = "tls")]
    fn own_tls() -> Option<BackendTls> {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("self-signed").pem();
        Some(crate::tls::TlsConfig::new().ca_certificate(ca).into())
    }

    #[cfg(feature = "tls")]
    #[test]
    fn the_crates_own_tls_is_spoken_by_the_balancer_unless_there_is_a_hook() {
        let recipe = EndpointRecipe {
            tls: own_tls(),
            hook: None,
        };
        for asks in [false, true] {
            assert!(matches!(recipe.route(&instance(asks)), Route::Tls(_)));
            let endpoint = recipe.endpoint(&instance(asks)).expect("an endpoint");
            assert_eq!(endpoint.uri().to_string(), "https://127.0.0.1:1/");
        }
        let recipe = EndpointRecipe {
            tls: own_tls(),
            hook: hook(),
        };
        assert!(matches!(recipe.route(&instance(false)), Route::Tonic));
        let recipe = EndpointRecipe {
            tls: Some(BackendTls::Tonic(tonic::transport::ClientTlsConfig::new())),
            hook: None,
        };
        assert!(matches!(recipe.route(&instance(false)), Route::Tonic));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn an_invalid_tls_configuration_skips_the_instance_saying_why() {
        let recipe = EndpointRecipe {
            tls: Some(crate::tls::TlsConfig::new().into()),
            hook: None,
        };
        let error = recipe.endpoint(&instance(false)).expect_err("no ca");
        assert!(error.to_string().contains("no ca certificate"), "{error}");
    }
}
