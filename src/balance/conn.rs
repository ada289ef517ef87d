//! How the balancer reaches one endpoint: by a connection of its own, or by tonic's channel.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use super::direct::{ConnectError, Direct, KeepAlive, Tls};
use crate::discovery::Route;

/// What to connect to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// An endpoint with tonic's defaults, in plain text or with the crate's own TLS
    /// configuration: the balancer's own connection, to the instance's address.
    Direct(Option<Arc<OwnTls>>),
    /// Anything else (tonic's TLS configuration, the user's hook): tonic's channel, which
    /// honours every setting.
    Tonic(Box<Endpoint>),
}

impl Target {
    /// The target for a discovered `endpoint`, as `route` says.
    pub(crate) fn new(endpoint: Endpoint, route: Route) -> Self {
        match route {
            Route::Plain => Target::Direct(None),
            #[cfg(feature = "tls")]
            Route::Tls(connector) => Target::Direct(Some(Arc::new(OwnTls {
                connector,
                warned: AtomicBool::new(false),
            }))),
            Route::Tonic => Target::Tonic(Box::new(endpoint)),
        }
    }

    /// Connects. With the balancer's own connection, also returns a receiver that fails
    /// when the connection closes.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<(Conn, Option<oneshot::Receiver<()>>), tower::BoxError> {
        match self {
            Target::Direct(tls) => {
                let connector = tls.as_ref().map(|tls| &tls.connector);
                let result = Direct::connect(addr, keep_alive, connector).await;
                if let Some(tls) = tls {
                    tls.report(addr, result.as_ref().err());
                }
                let (direct, driver) = result?;
                let (open, closed) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    driver.await;
                    drop(open);
                });
                Ok((Conn::Direct(direct), Some(closed)))
            }
            Target::Tonic(endpoint) => Ok((Conn::Tonic(endpoint.connect().await?), None)),
        }
    }
}

/// The crate's own TLS configuration for one endpoint.
#[derive(Debug)]
pub(crate) struct OwnTls {
    connector: Tls,
    /// Whether a refusal has been warned of since the endpoint last connected.
    warned: AtomicBool,
}

impl OwnTls {
    /// Warns of the first TLS refusal about certificates since the endpoint last connected:
    /// a configuration to fix, which the debug logs of failed connections would hide. The
    /// probes that follow are refused the same way, and only logged at debug level.
    fn report(&self, addr: &str, error: Option<&ConnectError>) {
        let Some(error) = error else {
            self.warned.store(false, Ordering::Relaxed);
            return;
        };
        #[cfg(feature = "tls")]
        if let ConnectError::Tls {
            certificate: true, ..
        } = error
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(addr, error = %crate::error::Chain(error), "endpoint refused over tls");
        }
        #[cfg(not(feature = "tls"))]
        let _ = (addr, error);
    }
}

/// A connection to one endpoint; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) enum Conn {
    Direct(Direct),
    Tonic(Channel),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A plain service over either connection, for the health checks; calls go through
/// `call::call`, which retries what never left.
impl Service<Request<Body>> for Conn {
    type Response = Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Conn::Direct(direct) => match direct.is_closed() {
                true => Poll::Ready(Err("connection closed".into())),
                false => Poll::Ready(Ok(())),
            },
            Conn::Tonic(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self {
            Conn::Direct(direct) => {
                let response = direct.send(request);
                Box::pin(async move {
                    match response.await {
                        Ok(response) => Ok(response.map(Body::new)),
                        Err(error) => Err(error.into_error().into()),
                    }
                })
            }
            Conn::Tonic(channel) => {
                let response = channel.call(request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
        }
    }
}
