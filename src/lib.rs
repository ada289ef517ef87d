//! Client-side load balancing for [tonic] gRPC clients, with etcd as the service registry.
//!
//! Servers register themselves in etcd under a lease; clients watch the service's prefix and
//! spread their calls over whichever servers are alive right now. There is no proxy in the
//! data path.
//!
//! - **Client side.** [`EtcdDiscover`] turns the keys under an etcd prefix into
//!   [`tower::discover::Change`]s. [`EtcdDiscover::channel`] balances over them with the
//!   crate's own health- and load-aware [`BalancedChannel`]; [`EtcdDiscover::balance_channel`]
//!   feeds tonic's own balanced [`Channel`](tonic::transport::Channel) instead. Any generated
//!   client accepts either.
//! - **Server side.** [`Registrar`] puts the server's key under a lease and keeps it alive,
//!   re-registering if the lease is lost. Its [`Registration`] gives a layer that counts
//!   in-flight calls, and a [`shutdown`](Registration::shutdown) that deregisters first, then
//!   drains.
//!
//! # Client
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_etcd::{EtcdConfig, EtcdDiscover};
//!
//! let etcd = EtcdConfig::new(["http://127.0.0.1:2379"]).connect().await?;
//! let channel = EtcdDiscover::new(etcd, "greeter").channel();
//! // let mut client = GreeterClient::new(channel);
//! # drop(channel);
//! # Ok(())
//! # }
//! ```
//!
//! # Server
//!
//! Register the address clients should dial, serve with the registration's layer and stop
//! signal, and shut down on SIGTERM as well as SIGINT: a server that ignores SIGTERM
//! (systemd, Kubernetes) dies without deregistering.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::signal::unix::{SignalKind, signal};
//! use tonic::transport::{Server, server::TcpIncoming};
//! use tonic_etcd::{EtcdConfig, Registrar};
//!
//! // Listen for both signals before registering: one that comes in between would
//! // otherwise end the process at once, its key left in etcd for the TTL.
//! let mut terminate = signal(SignalKind::terminate())?;
//! let mut interrupt = signal(SignalKind::interrupt())?;
//! let etcd = EtcdConfig::new(["http://127.0.0.1:2379"]).connect().await?;
//! let incoming = TcpIncoming::bind("127.0.0.1:50051".parse()?)?.with_nodelay(Some(true));
//! let registration = Registrar::new(etcd)
//!     .register("greeter", incoming.local_addr()?)
//!     .await?;
//! let server = Server::builder()
//!     .layer(registration.layer())
//!     // .add_service(GreeterServer::new(MyGreeter))
//! #   .add_routes(tonic::service::Routes::default())
//!     .serve_with_incoming_shutdown(incoming, registration.stop_signal());
//! let server = tokio::spawn(server);
//! tokio::select! {
//!     _ = terminate.recv() => {}
//!     _ = interrupt.recv() => {}
//! }
//! registration.shutdown().await?; // deregister, wait, stop accepting, drain
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! The library logs through `tracing`; install a subscriber to see its warnings, with a
//! default level: `tracing_subscriber::fmt::init()` with the `env-filter` feature shows only
//! errors while `RUST_LOG` is unset (the README's snippets default to `info`). A dependent needs `protoc` with
//! the standard includes for etcd-client's build; this crate has no build script. The guide
//! is in the repository's `docs/`.
//!
//! # Features
//!
//! - `tls`: TLS to etcd and to the discovered servers (rustls), `TlsConfig`.
//! - `health`: `Registration::follow_health`, and active health checks in the balancer.
//! - `metrics`: endpoints, ejections, retries, discovery and the registrar recorded through
//!   the `metrics` facade, for the exporter the application installs; see [`metrics`].
//!
//! # Failure handling
//!
//! What the crate's own [`BalancedChannel`] does when endpoints fail, and where each
//! behaviour comes from (the guide's `docs/failure-handling.md` has the measurements):
//!
//! - **Dead or unreachable endpoint** (refused, reset, GOAWAY, a failed health check): out
//!   of rotation at once ([`EndpointState::Ejected`], [`EjectionReason::Connection`]),
//!   readmitted by a probe with jittered backoff ([`Balancer::probe_backoff`]). A call that
//!   never left is retried at once on another endpoint, at most 4 times, outside any
//!   retry policy or budget (gRFC A6's transparent retry).
//! - **Endpoint up but failing by status** (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`,
//!   `DATA_LOSS`): [`OutlierDetection`], on by default. Each failure lowers the endpoint's
//!   share at once (its recent success rate, squared, scales its chance in the pick, as
//!   go-zero and Kratos fold success into the load); 5 failures in a row eject it for 30 s,
//!   growing with each ejection to 300 s (gRFC A50; Envoy's `consecutive_5xx`); a
//!   success-rate check every 10 s ejects an endpoint far below the others' (A50). At
//!   most 10 % of the endpoints are ejected at once (at least one may be, while another
//!   stays), and while fewer than half of the others are healthy none is: when every
//!   endpoint fails, calls spread over all of them (Envoy's panic threshold). A call's
//!   own deadline or cancellation never counts against an endpoint.
//! - **Sent calls that failed**: retried only under a [`RetryPolicy`] the application
//!   sets per method with [`Balancer::retry_policy`] (gRFC A6): retryable codes, up to 5
//!   attempts, jittered exponential backoff, a different endpoint where one is up,
//!   `grpc-retry-pushback-ms` honoured. A request larger than [`Balancer::retry_buffer`]
//!   (256 KiB) is not retried once sent, nor is a call whose response headers reached
//!   the caller (while a retry could still follow, the channel holds a unary response until
//!   its trailers, at most 1 s, so a server killed mid-call is retried; see
//!   [`Balancer::retry_policy`]). [`RetryThrottling`] (a token bucket, on by default with
//!   a policy) stops retries while most calls fail: calls sent stay within `(1 +
//!   token_ratio)` × calls made, plus half the bucket.
//! - **Endpoint just joined or readmitted**: full share at once by default; with
//!   [`Balancer::slow_start`], its share ramps up over a window ([`SlowStart`], after
//!   Envoy's slow start mode).
//! - **No endpoint**: fails fast with `Unavailable` naming the cause, waits while one is
//!   on its way ([`Balancer::startup_wait`]) or when asked ([`Balancer::wait_for_ready`]);
//!   a call that fails at once yields first, so callers that retry at once cannot starve
//!   the runtime.
//!
//! [`BalancedChannel::endpoints`] shows, per endpoint, its state, the ejection reason and
//! count, its recent success rate, and its slow-start factor.
//!
//! # Layout
//!
//! - `discovery`: [`EtcdDiscover`]; the list-then-watch state machine, shared by the
//!   discoveries of a prefix made from one [`SharedDiscovery`]; the pure snapshot diff; the
//!   status.
//! - `balance`: the crate's own [`BalancedChannel`]: power of two choices, ejection, retry of
//!   unsent calls, optional active health checks.
//! - `channel`: feeding tonic's balanced channel.
//! - `registrar`: [`Registrar`], the lease task, the in-flight layer, health following.
//! - `etcd`: [`EtcdConfig`], connecting to etcd with TLS and authentication.
//! - `format`: wire formats and the instance model.
//! - `target`: [`Target`], endpoints, service and format from one string such as
//!   `etcd://10.0.0.1:2379/greeter?format=kratos`, for configuration files.
//! - `tls` (with the `tls` feature): `TlsConfig`, TLS to the discovered servers.
//! - [`metrics`]: the names of the metrics recorded with the `metrics` feature.
//! - `backoff`, `error`, `inflight`.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod balance;
mod channel;
mod discovery;
mod error;
mod etcd;
mod format;
mod inflight;
pub mod metrics;
mod registrar;
mod target;
#[cfg(feature = "tls")]
mod tls;

pub use backoff::Backoff;
pub use balance::{
    BalancedChannel, Balancer, EjectionReason, EndpointInfo, EndpointState,
    FailurePercentageEjection, OutlierDetection, RetryPolicy, RetryThrottling, SlowStart,
    SuccessRateEjection, parse_code,
};
pub use channel::DiscoveryHandle;
pub use discovery::{DiscoveryStatus, DiscoveryStream, EtcdDiscover, SharedDiscovery};
pub use error::Error;
pub use etcd::EtcdConfig;
pub use format::{
    Blog, DecodeError, EtcdNaming, Format, GoZero, Instance, Kratos, Metadata, PlainAddr,
    check_instance, check_service,
};
pub use registrar::{
    CountedBody, InFlight, InFlightLayer, MIN_TTL, Registrar, Registration, RegistrationStatus,
    ResponseFuture,
};
pub use target::{DEFAULT_ETCD_PORT, Target, TargetError, TargetFormat};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;

/// The README's snippets, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The etcd client this crate is built on; its [`Client`](etcd_client::Client) appears in
/// this crate's signatures.
pub use etcd_client;
