//! The balancer's own HTTP/2 connection to an endpoint, in plain text or over TLS.
//!
//! tonic's `Channel` puts a buffer task in front of its connection, so each call crosses two
//! tasks, and it drops a request it could not send. Here a call goes from the caller's task
//! straight to the connection's, and a request the connection never took comes back whole
//! (hyper's `try_send_request`), to be sent elsewhere without a copy.
//!
//! It is used for the endpoints with tonic's default settings, in plain text or with the
//! crate's own TLS configuration (see `discovery::Route`): with tonic's TLS configuration or
//! the user's endpoint hook, the balancer connects with tonic's `Channel`, which honours
//! every setting.

mod stream;
#[cfg(feature = "tls")]
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http2::{Builder, Connection, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tonic::body::Body;

use self::stream::{Stream, open};

/// How long a connection may take, as for the endpoints discovery builds.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sent unless the call has its own.
const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("tonic-etcd/", env!("CARGO_PKG_VERSION")));

/// HTTP/2 keepalive: a PING every `interval` while calls are in flight, and the connection
/// closed when one goes unanswered for `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl super::Balancer {
    /// Sends an HTTP/2 PING every `interval` on each of the balancer's own connections while
    /// calls are in flight on it, and closes the connection, ejecting its endpoint, when a
    /// PING goes unanswered for `timeout`. This finds a server that vanished without closing
    /// its connections (a network partition, a frozen host), on which calls would otherwise
    /// only time out, one by one. Default: off, as in tonic and gRPC: servers may refuse
    /// frequent PINGs (grpc-go allows one per 5 minutes by default, unless its keepalive
    /// policy says otherwise; tonic servers accept them).
    ///
    /// For endpoints reached through tonic's `Channel` (TLS, or an
    /// [`endpoint`](crate::discovery::EtcdDiscover::endpoint) hook), set
    /// `Endpoint::http2_keep_alive_interval` and `keep_alive_timeout` in the hook instead.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some(KeepAlive { interval, timeout });
        self
    }
}

/// A handle on one connection; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Direct {
    sender: SendRequest<Body>,
    authority: Authority,
    scheme: Scheme,
    reads: Reads,
}

/// How many reads of a connection's socket have brought bytes (or its end) so far: what
/// a held response ([`hold`](super::hold)) looks at to tell a quiet stream from a
/// connection that has not been read (a stalled server or a busy machine). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reads(Arc<AtomicU64>);

impl Reads {
    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{addr:?} is not a valid authority")]
    Address { addr: String },
    #[error("connecting to {addr} (with the HTTP/2 handshake) timed out after {CONNECT_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("cannot connect to {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "tls")]
    #[error("tls handshake with {addr} failed: {reason}")]
    Tls {
        addr: String,
        reason: String,
        #[source]
        source: Option<std::io::Error>,
        /// Whether it is about certificates: a configuration to fix.
        certificate: bool,
    },
    #[error("HTTP/2 handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}

impl Direct {
    /// Connects to `addr` (`host:port`) with TCP_NODELAY, as tonic does, runs the TLS
    /// handshake if `tls` is given, and completes the HTTP/2 handshake, all within
    /// [`CONNECT_TIMEOUT`]. Returns the handle, and the connection's own future: it must be
    /// spawned, and ends when the connection closes.
    pub(crate) async fn connect(
        addr: &str,
        keep_alive: Option<KeepAlive>,
        tls: Option<&Tls>,
    ) -> Result<(Direct, impl Future<Output = ()> + Send + 'static), ConnectError> {
        let authority: Authority = addr.parse().map_err(|_| ConnectError::Address {
            addr: addr.to_owned(),
        })?;
        let reads = Reads::default();
        let connect = async {
            let io = open(addr, tls, &authority).await?;
            let stream = Stream {
                io,
                reads: reads.clone(),
            };
            handshake(stream, keep_alive, addr).await
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr: addr.to_owned(),
            })??;
        let driver = async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %crate::error::Chain(&error), "connection ended");
            }
        };
        let scheme = match tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        };
        let direct = Direct {
            sender,
            authority,
            scheme,
            reads,
        };
        Ok((direct, driver))
    }

    /// The connection's read count.
    pub(crate) fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Whether the connection has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `request` to this endpoint. A request the connection did not take comes back
    /// in the error.
    pub(crate) fn send(
        &mut self,
        mut request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<Body>>>> + use<> {
        self.address(&mut request);
        self.sender.try_send_request(request)
    }

    /// Sets the request's scheme and authority to this endpoint's, and the user agent, as
    /// tonic's channel does.
    fn address(&self, request: &mut Request<Body>) {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set: this cannot fail.
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        request.headers_mut().entry(USER_AGENT).or_insert(AGENT);
    }
}

/// The HTTP/2 handshake on `stream`: the handle for calls and the connection's own future.
async fn handshake(
    stream: Stream,
    keep_alive: Option<KeepAlive>,
    addr: &str,
) -> Result<(SendRequest<Body>, Connection<TokioIo<Stream>, Body, Boxed>), ConnectError> {
    let mut builder = Builder::new(Boxed);
    builder.timer(TokioTimer::new());
    if let Some(keep_alive) = keep_alive {
        builder
            .keep_alive_interval(keep_alive.interval)
            .keep_alive_timeout(keep_alive.timeout);
    }
    builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake {
            addr: addr.to_owned(),
            source,
        })
}

/// Spawns the tasks hyper starts for each call (sending the request body, waiting for the
/// response) on tokio, each boxed first, as tonic's channel does.
///
/// Unboxed, such a task is as large as hyper's largest (the connection's), and tokio moves
/// it several times while spawning and ending it: a few kilobytes copied per call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Boxed;

impl<F> hyper::rt::Executor<F> for Boxed
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        // Detached as with hyper's own executor: each ends with its call or its connection.
        drop(tokio::spawn(Box::pin(future)));
    }
}

/// The crate's own TLS configuration, or, without the `tls` feature, nothing.
#[cfg(feature = "tls")]
pub(crate) type Tls = crate::tls::Connector;
/// The crate's own TLS configuration, or, without the `tls` feature, nothing.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// The header with a call's deadline. A `HeaderName`, not a `&str`: a lookup by name skips
/// parsing it on every call.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The call's own deadline, from its `grpc-timeout` header, as tonic's channel reads it.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    // At most eight digits, by the gRPC spec.
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static(value));
        grpc_timeout(&headers)
    }

    #[test]
    fn reads_every_unit_of_grpc_timeout() {
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn ignores_a_malformed_grpc_timeout() {
        for bad in ["", "m", "5", "5x", "123456789m", "-5m", "5 m", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
