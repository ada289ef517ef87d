//! How a decoded instance becomes an [`Endpoint`]: the scheme, TLS, then the user's hook.

use std::time::Duration;

use tonic::transport::Endpoint;
#[cfg(not(feature = "tls"))]
use tracing::warn;

use super::EndpointHook;
use crate::format::{DecodeError, Instance};

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
pub(super) enum Skip {
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

    /// Whether the endpoint for `instance` is the default one: `http://<addr>`, no hook.
    pub(super) fn is_plain(&self, instance: &Instance) -> bool {
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
