//! Server side: keeping a server's key alive in etcd under a lease, and taking it out first
//! on shutdown.

#[cfg(feature = "health")]
mod health;
mod layer;
mod lease;
mod registration;

pub use crate::inflight::CountedBody;
pub use layer::{InFlight, InFlightLayer, ResponseFuture};
pub use registration::Registration;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::backoff::Retry;
use crate::error::Error;
use crate::etcd::seam::lease::Leases;
use crate::format::{EtcdNaming, Format, Instance, check_instance, check_service};
use lease::{LeaseState, LeaseTask};

/// The smallest lease TTL accepted: etcd's own minimum is about 2 s.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The largest lease TTL accepted: etcd's `MaxLeaseTTL`, 9,000,000,000 s, above which etcd
/// refuses to grant the lease.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// Above this TTL (5 min), registering warns: after a crash (kill -9, power loss), clients
/// keep calling the dead server's address until its lease expires.
pub(crate) const LONG_TTL: Duration = Duration::from_secs(300);

/// Registers a server in etcd under a lease. Built once, consumed by
/// [`register`](Registrar::register).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tonic_etcd::Registrar;
///
/// let client = tonic_etcd::EtcdConfig::new(["http://127.0.0.1:2379"]).connect().await?;
/// let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?
///     .with_nodelay(Some(true)); // else small replies can stall 40 ms on delayed ACKs
/// let addr = incoming.local_addr()?; // the real port, even when binding port 0
/// let registration = Registrar::new(client)
///     .ttl(Duration::from_secs(10))
///     .register("greeter", addr)
///     .await?;
/// // Server::builder().layer(registration.layer()) ... .serve_with_incoming_shutdown(
/// //     incoming, registration.stop_signal())
/// // and on SIGTERM: registration.shutdown().await
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct Registrar {
    client: etcd_client::Client,
    ttl: Duration,
    format: Arc<dyn Format>,
    backoff: Backoff,
    grace: Duration,
    drain_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("ttl", &self.ttl)
            .field("format", &self.format)
            .field("grace", &self.grace)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Registrar {
    /// A registrar that writes through `client`.
    pub fn new(client: etcd_client::Client) -> Self {
        Registrar {
            client,
            ttl: Duration::from_secs(10),
            format: Arc::new(EtcdNaming),
            backoff: Backoff::default(),
            grace: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// A registrar for the service a target string names, in the format it names, through
    /// a new etcd client connected to the endpoints it names: one string for a
    /// configuration file, such as `etcd://10.0.0.1:2379/services/greeter?format=go-zero`.
    /// See [`Target`](crate::Target) for the shape and its defaults. Returns the registrar
    /// and the service to [`register`](Registrar::register) under.
    ///
    /// The client has [`EtcdConfig`](crate::EtcdConfig)'s defaults; for credentials or TLS
    /// to etcd, parse the [`Target`](crate::Target) and connect with its
    /// [`etcd_config`](crate::Target::etcd_config), as for
    /// [`EtcdDiscover::from_target`](crate::EtcdDiscover::from_target).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let target = "etcd://127.0.0.1:2379/greeter?format=go-zero";
    /// let (registrar, service) = tonic_etcd::Registrar::from_target(target).await?;
    /// let addr: std::net::SocketAddr = "127.0.0.1:50051".parse()?;
    /// let registration = registrar.register(&service, addr).await?;
    /// # drop(registration);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`], naming the bad part, before any I/O; then the errors of
    /// [`EtcdConfig::connect`](crate::EtcdConfig::connect).
    pub async fn from_target(target: &str) -> Result<(Self, String), Error> {
        let target = crate::target::Target::parse_or_error(target)?;
        let client = target.etcd_config().connect().await?;
        let registrar = Registrar::new(client).format(target.format());
        Ok((registrar, target.service))
    }

    /// The lease TTL: how long the key outlives a crashed server. At least [`MIN_TTL`] and at
    /// most etcd's maximum lease TTL, 9,000,000,000 s, else [`register`](Registrar::register)
    /// fails with [`Error::InvalidTtl`]; rounded up to whole seconds. The lease is kept alive
    /// every TTL/3. Default: 10 s.
    ///
    /// Above 5 min, `register` logs a warning: after a crash (kill -9, power loss) clients
    /// keep calling the dead server's address until the lease expires. A clean
    /// [`shutdown`](Registration::shutdown) revokes the lease at once, whatever its TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The wire format of the key and value. Default: [`EtcdNaming`].
    pub fn format(mut self, format: impl Format) -> Self {
        self.format = Arc::new(format);
        self
    }

    /// The backoff between retries while etcd fails. Default: 100 ms doubling to 10 s, with
    /// jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long [`Registration::shutdown`] waits after deregistering, so clients see the
    /// removal before the server stops accepting calls. Default: 1 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long [`Registration::shutdown`] waits for in-flight calls. Default: 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long one request to etcd may take. Default: 5 s. Zero, with which every request
    /// would fail, makes [`register`](Registrar::register) fail with
    /// [`Error::InvalidDuration`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Grants a lease, puts the instance's key under it, and starts keeping it alive.
    ///
    /// Pass the address clients should dial: the listener's `local_addr()` when it binds a
    /// specific address (so that binding port 0 works), or `Instance::new("host:port")` with
    /// the address to advertise when it binds `0.0.0.0` or `::`. Fails if etcd cannot be
    /// reached now; once registered, the registration survives etcd outages on its own. More
    /// instances, of this service or others, can share the lease through
    /// [`Registration::add`].
    ///
    /// # Errors
    ///
    /// Before any I/O, with nothing written to etcd:
    ///
    /// - [`Error::InvalidTtl`] for a TTL below [`MIN_TTL`] or above etcd's maximum,
    ///   9,000,000,000 s;
    /// - [`Error::InvalidDuration`] for a zero [`request_timeout`](Registrar::request_timeout);
    /// - [`Error::InvalidPrefix`] for an empty or root-only service name, or another that
    ///   [`check_service`](crate::check_service) refuses;
    /// - [`Error::InvalidAddress`] for an address clients cannot dial: port 0, or the
    ///   unspecified `0.0.0.0` or `::` ([`check_instance`](crate::check_instance)).
    ///
    /// Then the errors of granting the lease and putting the key.
    #[must_use = "dropping the registration stops its keep-alives: the key expires after the TTL"]
    pub async fn register(
        self,
        service: impl Into<String>,
        instance: impl Into<Instance>,
    ) -> Result<Registration, Error> {
        let etcd = Arc::new(self.client.clone());
        self.register_through(etcd, service.into(), instance.into())
            .await
    }

    /// [`register`](Registrar::register), reaching etcd through `etcd`: the registrar's
    /// client, or a fake in unit tests.
    async fn register_through(
        self,
        etcd: Arc<dyn Leases>,
        service: String,
        instance: Instance,
    ) -> Result<Registration, Error> {
        check_settings(self.ttl, self.request_timeout)?;
        check_service(&self.format, &service)?;
        check_instance(&instance)?;
        let mut task = self.lease_task(etcd.clone());
        let (key, start) = task.register_first(service, instance).await?;
        Ok(self.start(task, start, key, etcd))
    }

    /// The lease task of a registration, not yet started, holding no instance.
    fn lease_task(&self, etcd: Arc<dyn Leases>) -> LeaseTask {
        let status = Arc::new(watch::Sender::new(RegistrationStatus::Registering));
        crate::metrics::registrar_status(&status.borrow());
        LeaseTask {
            client: etcd,
            format: self.format.clone(),
            entries: Vec::new(),
            withdrawn: false,
            ttl: self.ttl,
            request_timeout: self.request_timeout,
            retry: Retry::new(self.backoff),
            status,
            lease: Arc::new(AtomicI64::new(0)),
            expires: tokio::time::Instant::now(),
        }
    }

    /// Starts `task` in `start`, its first instance registered under `key`, and returns the
    /// registration that owns it.
    fn start(
        self,
        task: LeaseTask,
        start: LeaseState,
        key: String,
        etcd: Arc<dyn Leases>,
    ) -> Registration {
        let (status, lease) = (task.status.clone(), task.lease.clone());
        let (commands, command_rx) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let span = tracing::info_span!(
            "tonic_etcd::lease",
            lease_id = lease.load(Ordering::Acquire)
        );
        let lease_task = tokio::spawn(task.run(start, command_rx, stop_rx).instrument(span));
        let (serving, _) = watch::channel(true);
        Registration {
            key,
            etcd,
            status,
            lease,
            format: self.format,
            counter: Arc::default(),
            serving,
            commands,
            stop,
            tasks: vec![lease_task],
            grace: self.grace,
            drain_timeout: self.drain_timeout,
            request_timeout: self.request_timeout,
            ttl: self.ttl,
            shut_down: false,
        }
    }
}

/// Checks the TTL and the request timeout before any I/O, and warns about a TTL so long
/// that a crashed server stays registered for a long time.
fn check_settings(ttl: Duration, request_timeout: Duration) -> Result<(), Error> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Error::InvalidTtl {
            ttl,
            min: MIN_TTL,
            max: MAX_TTL,
        });
    }
    if request_timeout.is_zero() {
        return Err(Error::InvalidDuration {
            setting: "request timeout",
            value: request_timeout,
            reason: "every request to etcd would time out at once",
        });
    }
    if ttl > LONG_TTL {
        tracing::warn!(
            ttl = %crate::error::Secs(ttl),
            "lease ttl over 5 min: after a crash, clients keep calling the dead server's address until the lease expires"
        );
    }
    Ok(())
}

impl From<std::net::SocketAddr> for Instance {
    fn from(addr: std::net::SocketAddr) -> Self {
        Instance::new(addr.to_string())
    }
}

/// What a registration reports about itself.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RegistrationStatus {
    /// The first registration has not completed yet.
    Registering,
    /// The key is in etcd under `lease_id`, and the lease is being kept alive.
    Registered {
        /// The lease holding the key.
        lease_id: i64,
    },
    /// etcd failed for a reason that may pass; the registrar keeps retrying with backoff.
    Retrying {
        /// How many attempts have failed in a row.
        attempt: u32,
        /// The last error.
        error: Error,
    },
    /// The registration was shut down.
    Deregistered,
    /// etcd refused the registration for good (permission denied, bad credentials): the
    /// registrar stopped retrying. The key, if it was ever written, expires with its lease.
    Failed {
        /// Why.
        error: Error,
    },
}

#[cfg(test)]
mod tests {
    use super::lease::ttl_secs;
    use super::{MAX_TTL, MIN_TTL, check_settings};
    use crate::error::Error;
    use std::time::Duration;

    #[test]
    fn ttls_and_timeouts_are_checked_before_any_io() {
        let ok = Duration::from_secs(5);
        assert!(check_settings(MIN_TTL, ok).is_ok());
        assert!(
            check_settings(Duration::from_secs(100_000), ok).is_ok(),
            "long: warns only"
        );
        assert!(check_settings(MAX_TTL, ok).is_ok());
        for ttl in [Duration::from_secs(1), MAX_TTL + Duration::from_secs(1)] {
            let error = check_settings(ttl, ok).expect_err("out of range");
            assert!(matches!(error, Error::InvalidTtl { .. }), "{error}");
            assert!(error.to_string().contains("9000000000 s"), "{error}");
        }
        let error = check_settings(MIN_TTL, Duration::ZERO).expect_err("zero timeout");
        assert!(matches!(error, Error::InvalidDuration { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            "invalid request timeout 0 s: every request to etcd would time out at once"
        );
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
    }
}
