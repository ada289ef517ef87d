//! The crate's own balancer: health- and load-aware, with no proxy.
//!
//! # Layout
//!
//! Decisions are pure and unit-tested; a thin shell carries them out.
//!
//! - `mod.rs`: [`Balancer`] and [`BalancedChannel`]; `failure`: the balancer's settings
//!   for failure handling; `info`: [`EndpointInfo`] and `endpoints()`.
//! - `shared`: what the driver and the channels share ([`Shared`]): the published
//!   [`PickView`] of the endpoints (what a call picks from), whether discovery has synced,
//!   the channel-wide latency reference.
//! - `wait`: picking an endpoint that is up, and waiting for one; `cause`: why none was.
//! - `pick`: power of two choices over weights scaled by a chance per endpoint, and the
//!   latency estimate it compares (pure).
//! - `subset`: which endpoints are connected, as a pure state machine that returns actions.
//! - `driver`: the channel's own task: feeds discovery changes and events to the subset and
//!   carries out its actions through a `connect::Connector`; runs the outlier sweep.
//! - `connect`: the connector task of a member: connect, probe with backoff, health checks.
//! - `backend`: one endpoint's state, connection, load and `standing` (its outlier state
//!   and slow-start ramp); `conn`, `direct`, `health`: the ways to reach it.
//! - `call`: one call: pick, send, retry what never left, yield on an immediate error;
//!   `status_observer` reads how it ended (`grpc-status`).
//! - `outlier` (pure): outlier detection's settings, per-endpoint state and set-wide
//!   decisions (gRFC A50); `ejection`: the shell that records calls into it, ejects and
//!   sweeps. An outlier ejection only takes the endpoint out of the pick: its connection
//!   stays, and it comes back when the ejection time ends.
//! - `slow_start` (pure): the ramp of an endpoint that comes into rotation.
//! - `retry_policy`, `retry_decision`, `retry_throttle`, `codes` (pure): retries of sent
//!   calls (gRFC A6); `retry`: the shell around `call::call` that carries them out,
//!   `replay`: the request body recorded to send it again, `hold`: a response held until
//!   its first message is in, so that the caller has seen nothing of a retried attempt.

mod at_once;
mod backend;
mod call;
mod cause;
mod codes;
mod conn;
mod connect;
mod direct;
mod driver;
mod ejection;
mod failure;
mod handles;
mod health;
mod hold;
mod info;
mod longest;
mod outlier;
mod pick;
mod replay;
mod retry;
mod retry_decision;
mod retry_policy;
mod retry_throttle;
mod shared;
mod slow_start;
mod standing;
mod status_observer;
mod subset;
mod wait;
mod yielding;

pub use backend::EndpointState;
pub use codes::parse_code;
pub use info::EndpointInfo;
pub use outlier::{
    EjectionReason, FailurePercentageEjection, OutlierDetection, SuccessRateEjection,
};
pub use retry_policy::RetryPolicy;
pub use retry_throttle::RetryThrottling;
pub use slow_start::SlowStart;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tonic::body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::discovery::{DiscoveryStatus, EtcdDiscover};
use connect::{Connect, Settings};
use failure::DEFAULT_RETRY_BUFFER;
use retry_policy::RetryPolicies;
use shared::{PickView, Shared};

/// Configures the crate's own balancer; [`channel`](Balancer::channel) starts it.
///
/// ```no_run
/// # async fn run(etcd: tonic_etcd::etcd_client::Client) {
/// use std::time::Duration;
/// use tonic_etcd::{Balancer, EtcdDiscover};
///
/// let channel = Balancer::new()
///     .zone("eu-1")
///     .wait_for_ready(Duration::from_secs(2))
///     .channel(EtcdDiscover::new(etcd, "greeter"));
/// // GreeterClient::new(channel)
/// # drop(channel);
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Balancer {
    zone: Option<String>,
    wait_for_ready: Option<Duration>,
    startup_wait: Duration,
    probe_backoff: Backoff,
    latency_decay: Duration,
    health_check: Option<health::HealthCheck>,
    subset: usize,
    keep_alive: Option<direct::KeepAlive>,
    outlier: Option<OutlierDetection>,
    slow_start: Option<SlowStart>,
    retry: RetryPolicies,
    retry_throttling: Option<RetryThrottling>,
    retry_buffer: usize,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            zone: None,
            wait_for_ready: None,
            startup_wait: Duration::from_secs(5),
            probe_backoff: Backoff::default()
                .initial(Duration::from_millis(50))
                .max(Duration::from_secs(5)),
            latency_decay: Duration::from_secs(1),
            health_check: None,
            subset: DEFAULT_SUBSET,
            keep_alive: None,
            outlier: Some(OutlierDetection::default()),
            slow_start: None,
            retry: RetryPolicies::new(),
            retry_throttling: Some(RetryThrottling::default()),
            retry_buffer: DEFAULT_RETRY_BUFFER,
        }
    }
}

impl Balancer {
    /// A balancer with the defaults below.
    pub fn new() -> Self {
        Balancer::default()
    }

    /// The client's zone: endpoints whose metadata names the same zone get every call while
    /// any of them is up. Default: none, every endpoint alike.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Lets a call wait up to `wait` for an endpoint when none is up, instead of failing at
    /// once with `Unavailable` (gRPC's wait-for-ready, bounded). The call's own deadline
    /// (`grpc-timeout`) still ends the wait first, with tonic's "Timeout expired". Default:
    /// none (fail fast, after the [`startup_wait`](Balancer::startup_wait) cases).
    pub fn wait_for_ready(mut self, wait: Duration) -> Self {
        self.wait_for_ready = Some(wait);
        self
    }

    /// How long a call may wait for an endpoint while one is on its way, without
    /// [`wait_for_ready`](Balancer::wait_for_ready). Default: 5 s.
    ///
    /// - **Until discovery has listed etcd successfully**, a call waits for the listing,
    ///   up to `wait` after the channel was made. A failed listing (etcd down, unreachable,
    ///   still starting) does not end the wait: discovery retries, and the first listing
    ///   that succeeds does. A permanent failure ([`DiscoveryStatus::Failed`]) ends it at
    ///   once. Once `wait` has passed, calls fail fast until the listing succeeds.
    /// - **While endpoints are known but none is up yet** (a first connection under way,
    ///   or, with a [`subset`](Balancer::subset), endpoints left to try in place of failed
    ///   members), a call waits for the first one up, up to `wait` after it started.
    ///
    /// The call's own deadline (`grpc-timeout`) ends either wait first, with tonic's
    /// "Timeout expired". A wait that runs out fails with `Unavailable`, whose message
    /// says why (see [`BalancedChannel`]).
    pub fn startup_wait(mut self, wait: Duration) -> Self {
        self.startup_wait = wait;
        self
    }

    /// The backoff between probes of an ejected endpoint. Default: 50 ms doubling to 5 s,
    /// with jitter.
    pub fn probe_backoff(mut self, backoff: Backoff) -> Self {
        self.probe_backoff = backoff;
        self
    }

    /// How many endpoints the channel keeps connected. Default: 32.
    ///
    /// While discovery finds no more endpoints than this, the channel connects to every one,
    /// and probes a failed one, with backoff, until it answers. With more, it connects to a
    /// random subset of this size, from its own [`zone`](Balancer::zone) first, and
    /// balances over that:
    ///
    /// - a member that fails leaves the subset at once for another endpoint (at most this
    ///   many replacements per 100 ms, so a prefix of dead endpoints is not tried at the
    ///   pace of their refusals), and rests (2 s, doubling with each failure in a row to
    ///   60 s) before it may be drawn again;
    /// - a new endpoint joins at once in place of a random member, with the odds that keep
    ///   the subset a uniform sample (reservoir sampling), so servers added later get their
    ///   share of the calls of many clients;
    /// - a member from another zone makes room for an endpoint of the client's zone as soon
    ///   as one is available.
    ///
    /// A member that fails calls by status and is ejected by
    /// [`outlier_detection`](Balancer::outlier_detection) keeps its place, connected, until
    /// its ejection ends (the pick skips it meanwhile), as in gRPC's random subsetting
    /// (gRFC A68), where subsetting and ejection are separate layers; the max ejection
    /// percent bounds how many members are out at once.
    ///
    /// An endpoint outside the subset ([`EndpointState::Idle`]) costs no connection, task
    /// or timer, so a client can follow a prefix of thousands of servers. At least 1.
    pub fn subset(mut self, size: usize) -> Self {
        self.subset = size.max(1);
        self
    }

    /// Starts balancing over what `discover` finds, and returns the channel.
    ///
    /// A background task, owned by the channel, applies discovery changes as they come,
    /// whether calls flow or not, and connects to new endpoints at once, up to the
    /// [`subset`](Balancer::subset). It stops when the
    /// last clone of the channel is dropped. Must be called inside a tokio runtime.
    pub fn channel(self, discover: EtcdDiscover) -> BalancedChannel {
        let service = discover.service().to_owned();
        let status = discover.status();
        let connector = Connect(Settings::new(&self));
        let state = Arc::new(Shared::new(service, status.clone(), self));
        let (stop, stopped) = oneshot::channel();
        let span = tracing::info_span!("tonic_etcd::balance", service = %state.service);
        let changes = discover.into_stream();
        let driver = driver::drive(state.clone(), changes, status.clone(), connector, stopped);
        tokio::spawn(driver.instrument(span));
        BalancedChannel {
            snapshot: Arc::default(),
            version: 0,
            state,
            status,
            _owner: Arc::new(Owner { _stop: stop }),
        }
    }
}

impl EtcdDiscover {
    /// Returns a channel balanced by the crate's own [`Balancer`], with its defaults: the
    /// recommended client. See [`balance_channel`](EtcdDiscover::balance_channel) for
    /// tonic's own.
    pub fn channel(self) -> BalancedChannel {
        Balancer::new().channel(self)
    }
}

/// The default size of the connected subset.
const DEFAULT_SUBSET: usize = 32;

/// Signals the driver to stop once the last channel is dropped.
struct Owner {
    _stop: oneshot::Sender<()>,
}

/// A balanced channel over the servers discovered in etcd: pass it to any generated tonic
/// client (`GreeterClient::new(channel)`). Cheap to clone; every clone shares the endpoints.
///
/// How it picks and recovers:
///
/// - **Power of two choices** over the endpoints that are up, drawn by the weights in their
///   metadata, by a real load: calls in flight (counted until the response body ends, so
///   streams count) times an EWMA of latency that decays over a second. A candidate
///   more than twice as costly loses; closer than that, fewer calls in flight win, so
///   latency noise between equal servers does not skew the spread. An endpoint left out of
///   the pick for 250 ms that has since lost `4 × total weight / its weight` pairs wins its
///   next pair once, so one slow sample cannot keep a healthy endpoint out (go-zero's p2c
///   `forcePick`, bounded by traffic as well as time: at most one call in
///   `4 × total weight / heaviest weight + 1`, and none to speak of with calls 50 ms apart).
/// - **Passive ejection.** A transport failure (refused, reset, GOAWAY) takes the endpoint
///   out of rotation at once; a probe, backed off with jitter, readmits it.
/// - **Outlier detection** ([`Balancer::outlier_detection`], on by default): an endpoint
///   that fails calls by gRPC status (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`)
///   loses its share of calls at once, and after 5 failures in a row is ejected from the
///   pick for 30 s (longer each time), within a max ejection percent; when most
///   endpoints fail, calls spread over all of them instead (gRFC A50, Envoy's panic
///   threshold).
/// - **A call that never left is retried** at once on another endpoint, so a dead endpoint
///   costs no failed call. A call already sent is retried only under a
///   [`Balancer::retry_policy`] (gRFC A6).
/// - **No endpoint fails fast** with `Unavailable`, unless [`Balancer::wait_for_ready`]
///   allows a bounded wait, or an endpoint is on its way ([`Balancer::startup_wait`]). It
///   never hangs. See [What a caller sees](#what-a-caller-sees).
/// - **Changes apply while idle**: the channel's own task follows discovery and drops a
///   removed endpoint's connection.
/// - **A bounded subset.** Up to [`Balancer::subset`] endpoints (32) are connected; with
///   more, a random subset is, and a failed member makes room for another endpoint. The
///   others are known but cost no connection ([`EndpointState::Idle`]).
/// - **Its own connections.** To an endpoint without an
///   [`endpoint`](EtcdDiscover::endpoint) hook, in plain text or over TLS with the crate's
///   own `TlsConfig` (rustls, ALPN `h2`), it opens its own HTTP/2 connection, with tonic's
///   default settings, TCP_NODELAY, the call's `grpc-timeout` as its deadline, and the user
///   agent `tonic-etcd/<version>` unless the call sets one: a call crosses no buffer task, a
///   closed connection ejects its endpoint at once, and a request the connection did not
///   take comes back whole to go elsewhere. With a hook, or tonic's `ClientTlsConfig`
///   (`EtcdDiscover::tls`), it uses tonic's `Channel`, which honours every setting of the
///   endpoint.
///
/// # What a caller sees
///
/// When no endpoint is up, a call:
///
/// - **before discovery has listed etcd** (etcd down or unreachable at start), waits for
///   the first successful listing, up to [`Balancer::startup_wait`] after the channel was
///   made; then fails with `Unavailable`, whose message names the cause, such as
///   `no endpoint of service "echo": etcd at 127.0.0.1:2379 unreachable: connection
///   refused, retrying (attempt 6)`;
/// - **while an endpoint is connecting**, or a subset has endpoints left to try, waits
///   for the first one up, up to [`Balancer::startup_wait`] after the call started;
/// - **otherwise** (none registered, every endpoint ejected) fails at once with
///   `Unavailable`: `no endpoint of service "echo": none registered under etcd prefix
///   "echo/"` (followed by how many keys under it were skipped, and why, if any were), or
///   `no endpoint of service "echo": 3 known, none up (3 ejected)`;
/// - with [`Balancer::wait_for_ready`], waits up to that long in every case;
/// - never waits past its own deadline (`grpc-timeout`): it then fails as tonic's
///   channel does, with `Cancelled` and "Timeout expired".
///
/// A call that fails without waiting yields to the scheduler before it returns, so callers
/// that retry at once, however many, cannot starve the runtime: the channel's own task
/// still applies discovery within milliseconds, and new endpoints still connect. A call
/// that was never sent is retried at once on another endpoint, at most 4 times.
///
#[derive(Clone)]
pub struct BalancedChannel {
    /// The endpoints as of `version`: refreshed when stale, so a call reads no lock.
    snapshot: Arc<PickView>,
    version: u64,
    state: Arc<Shared>,
    status: watch::Receiver<DiscoveryStatus>,
    _owner: Arc<Owner>,
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("service", &self.state.service)
            .field("endpoints", &self.state.snapshot().known.len())
            .finish_non_exhaustive()
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: each call picks its endpoint, and waits or fails fast, by itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let version = self.state.version();
        if version != self.version {
            self.snapshot = self.state.snapshot();
            self.version = version;
        }
        let picked = self.snapshot.pick(self.state.in_panic());
        let retry = &self.state.config.retry;
        let policy = match retry.is_empty() {
            true => None,
            false => retry.policy_for(request.uri().path()).copied(),
        };
        match (policy, picked) {
            (None, Some(picked)) => at_once::send(self.state.clone(), picked, request),
            (None, None) => at_once::full(self.state.clone(), None, request),
            (Some(policy), picked) => Box::pin(call::yielding(retry::call(
                self.state.clone(),
                policy,
                picked,
                request,
            ))),
        }
    }
}
