//! Client side: turning the keys under an etcd prefix into endpoint changes.

mod addresses;
mod config;
mod decode;
mod diff;
mod engine;
mod entries;
mod hub;
mod published;
mod recipe;
mod shared;
mod status;
mod stream;
mod subscriber;

pub(crate) use recipe::{Discovered, Route};
pub use shared::SharedDiscovery;
pub use status::DiscoveryStatus;
pub use stream::DiscoveryStream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::format::{EtcdNaming, Format, Instance};
#[cfg(feature = "tls")]
use crate::tls::TlsConfig;
use config::Config;
use hub::{Settings, Watches};
use recipe::EndpointRecipe;
use stream::ChangeStream;
use subscriber::run;

/// Discovery of the servers registered under an etcd prefix: the builder.
///
/// A consuming builder, as tonic's [`Endpoint`] is: its setters configure it, then
/// [`into_stream`](EtcdDiscover::into_stream) turns it into the running
/// [`DiscoveryStream`], a [`tower::discover::Discover`] (as [`Endpoint::connect_lazy`]
/// gives a [`Channel`](tonic::transport::Channel)), and [`channel`](EtcdDiscover::channel)
/// and [`balance_channel`](EtcdDiscover::balance_channel) balance over it. A setting cannot
/// change once discovery runs.
///
/// The stream lists the prefix, remembers the revision, then watches `<prefix>/` from the next
/// revision, so servers registered before the client started are found and no change in
/// between is missed. Each item is a [`Change`](tower::discover::Change) keyed by an etcd key, with one endpoint per
/// address however many keys hold it:
///
/// - a new key, or a put that changes a key's value, is an [`Change::Insert`](tower::discover::Change::Insert) with that key
///   (an update is never a remove followed by an insert);
/// - a key whose address another key holds already adds nothing: the endpoint stays under
///   the first key, and follows the value put last (as go-zero counts an address once, so a
///   server restarted on the same port, with a new key while its old lease has not expired,
///   does not get a double share);
/// - a deleted key is a [`Change::Remove`](tower::discover::Change::Remove) once no other key holds its address; if it is
///   the key the endpoint is announced under and another key holds the address, the
///   endpoint moves to that key (a remove, then an insert);
/// - a put with an unchanged value, or a repeated event, yields nothing;
/// - a value that does not decode is skipped with a `warn!` that names the key, and the
///   endpoint the key had before, if any, stays;
/// - the key or value of a nested service (`greeter/admin` under `greeter`) is skipped with
///   a `debug!` that names the key, where the format can tell ([`Format::decode_for`]).
///
/// Transient etcd failures never become items, because an `Err` poisons a tower balancer
/// for good. Discovery retries them with jittered backoff, resumes the watch from the last
/// applied revision, re-lists and diffs after a compaction, and keeps the last known
/// endpoints meanwhile. It reports what it is doing through [`EtcdDiscover::status`]. Only
/// a permanent error ([`Error::is_permanent`]: permission denied, bad credentials, an empty
/// prefix) is yielded, as the last item.
///
/// An `EtcdDiscover` made with [`new`](EtcdDiscover::new) has a watch of its own. Made from
/// a [`SharedDiscovery`], it shares one list-then-watch with every other discovery of the
/// same prefix made from that group (or its clones) with the same request settings (backoff,
/// timeouts, progress interval), on the group's one etcd client; each decodes the shared
/// watch with its own [`format`](EtcdDiscover::format) and
/// [`endpoint`](EtcdDiscover::endpoint) hook.
///
/// Building one does no I/O; that starts on the stream's first poll. The service is checked
/// at once ([`check_service`](crate::check_service)): an empty or root-only name, or one the
/// format cannot make a prefix of, makes the [`status`](EtcdDiscover::status) `Failed` with
/// [`Error::InvalidPrefix`] from the start, and the stream yields that error, before any I/O.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tonic_etcd::EtcdDiscover;
///
/// let client = tonic_etcd::EtcdConfig::new(["http://127.0.0.1:2379"]).connect().await?;
/// let (channel, discovery) = EtcdDiscover::new(client, "greeter").balance_channel();
/// // `channel` is a tonic `Channel`: hand it to any generated client.
/// # drop((channel, discovery));
/// # Ok(())
/// # }
/// ```
#[must_use = "a discovery does nothing until it runs: call into_stream, channel or balance_channel"]
pub struct EtcdDiscover {
    config: Config,
    status: watch::Receiver<DiscoveryStatus>,
}

impl EtcdDiscover {
    /// Discovers the instances of `service`, in the default [`EtcdNaming`] format: the keys
    /// under `<service>/`. A trailing slash on `service` is ignored; `greeter` never
    /// matches `greeter-admin/...`.
    ///
    /// It shares its watch with no other discovery; see [`SharedDiscovery`] to share one.
    pub fn new(client: etcd_client::Client, service: impl Into<String>) -> Self {
        EtcdDiscover::in_group(client, Arc::default(), service.into())
    }

    /// Discovers the service a target string names, in the format it names, through a new
    /// etcd client connected to the endpoints it names: one string for a configuration file,
    /// such as `etcd://10.0.0.1:2379,10.0.0.2:2379/services/greeter?format=kratos`. See
    /// [`Target`](crate::Target) for the shape and its defaults (port 2379, the
    /// [`EtcdNaming`] format).
    ///
    /// The client has [`EtcdConfig`](crate::EtcdConfig)'s defaults. For credentials or TLS to
    /// etcd, parse the [`Target`](crate::Target) and connect with its
    /// [`etcd_config`](crate::Target::etcd_config):
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tonic_etcd::{EtcdDiscover, Target};
    ///
    /// let target: Target = "etcd://10.0.0.1:2379/services/greeter?format=kratos".parse()?;
    /// let client = target.etcd_config().user("reader", "secret").connect().await?;
    /// let channel = EtcdDiscover::new(client, &target.service)
    ///     .format(target.format())
    ///     .channel();
    /// # drop(channel);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTarget`], naming the bad part, before any I/O; then the errors of
    /// [`EtcdConfig::connect`](crate::EtcdConfig::connect).
    pub async fn from_target(target: &str) -> Result<Self, Error> {
        let target = crate::target::Target::parse_or_error(target)?;
        let client = target.etcd_config().connect().await?;
        Ok(EtcdDiscover::new(client, target.service.as_str()).format(target.format()))
    }

    fn in_group(client: etcd_client::Client, watches: Arc<Watches>, service: String) -> Self {
        let (status, receiver) = watch::channel(DiscoveryStatus::Syncing);
        let config = Config {
            client,
            watches,
            service: service.clone(),
            format: Arc::new(EtcdNaming),
            endpoint_hook: EndpointRecipe::default(),
            settings: Settings {
                backoff: Backoff::default().max(Duration::from_secs(2)),
                request_timeout: Duration::from_secs(5),
                progress_interval: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(15),
                healthy_after: Duration::from_secs(10),
            },
            status: Arc::new(status),
        };
        // The status carries the outcome; `into_stream` checks again.
        let _ = config.check();
        EtcdDiscover {
            config,
            status: receiver,
        }
    }

    /// The wire format of the registry. Default: [`EtcdNaming`].
    pub fn format(self, format: impl Format) -> Self {
        self.configure(|c| c.format = Arc::new(format))
    }

    /// A hook that adjusts the [`Endpoint`] built for each instance: timeouts, TLS, HTTP/2
    /// settings. It receives the endpoint for `http://<addr>`, or `https://<addr>` with its
    /// TLS configuration when `tls_config` or `tls` (with the `tls` feature) is set or the
    /// instance asks for TLS, with a connect timeout of 5 s. Default: none.
    ///
    /// With a hook, the crate's own balancer connects through tonic's `Channel`, which
    /// honours every setting of the endpoint, rather than by its own connection.
    ///
    /// ```no_run
    /// # fn f(client: tonic_etcd::etcd_client::Client) {
    /// use std::time::Duration;
    /// let discover = tonic_etcd::EtcdDiscover::new(client, "greeter")
    ///     .endpoint(|endpoint, _instance| endpoint.timeout(Duration::from_secs(2)));
    /// # drop(discover);
    /// # }
    /// ```
    pub fn endpoint<F>(self, hook: F) -> Self
    where
        F: Fn(Endpoint, &Instance) -> Endpoint + Send + Sync + 'static,
    {
        self.configure(|c| c.endpoint_hook.hook = Some(Arc::new(hook)))
    }

    /// Connects to every discovered instance with TLS, configured by `config`: its CA
    /// certificates, client identity for mutual TLS, and server name (see [`TlsConfig`] for
    /// the defaults). Both balancers use it; the crate's own
    /// ([`channel`](EtcdDiscover::channel)) speaks it on its own HTTP/2 connections, over
    /// rustls. Default: only the instances that ask for TLS use it, through tonic's
    /// `Channel` with the roots of tonic's `tls-native-roots` or `tls-webpki-roots`
    /// features, if any is enabled.
    ///
    /// Every endpoint becomes `https://<addr>`, whether or not the instance asks for TLS,
    /// because most formats (etcd naming, go-zero) have no way to say so. A server that does
    /// not speak TLS then fails the handshake, and the balancer treats it like any other
    /// failing endpoint: it is ejected, and probed again with backoff. A server whose
    /// certificate is not trusted, or that refuses the client certificate, is ejected the
    /// same way, with a `warn!` that says so.
    ///
    /// Without a [`domain_name`](TlsConfig::domain_name), each server's certificate must be
    /// valid for the host of its registered address, an IP address for most registrations.
    /// With an [`endpoint`](EtcdDiscover::endpoint) hook, which may change anything, the
    /// crate's balancer connects through tonic's `Channel` instead, with the same settings.
    ///
    /// ```no_run
    /// # fn f(client: tonic_etcd::etcd_client::Client, ca_pem: &[u8]) {
    /// use tonic_etcd::{EtcdDiscover, TlsConfig};
    ///
    /// let channel = EtcdDiscover::new(client, "greeter")
    ///     .tls_config(TlsConfig::new().ca_certificate(ca_pem))
    ///     .channel();
    /// # drop(channel);
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_config(self, config: TlsConfig) -> Self {
        self.configure(|c| c.endpoint_hook.tls = Some(config.into()))
    }

    /// Connects to every discovered instance with TLS, configured by tonic's `config`, as
    /// [`tls_config`](EtcdDiscover::tls_config) does. Prefer that one: tonic's configuration
    /// is opaque, so with this one the crate's own balancer cannot connect by itself and
    /// goes through tonic's `Channel`, which costs a buffer task per call and a copy of each
    /// call's head for the retry of calls that never left.
    ///
    /// tonic 0.14 applies a TLS configuration only to `https://` URIs, and connects to an
    /// `http://` one in plain text, silently: so every endpoint becomes `https://<addr>`, as
    /// with [`tls_config`](EtcdDiscover::tls_config). The [`endpoint`](EtcdDiscover::endpoint)
    /// hook runs after, and can still change the TLS configuration of one endpoint.
    ///
    /// ```no_run
    /// # fn f(client: tonic_etcd::etcd_client::Client, ca_pem: &[u8]) {
    /// use tonic::transport::{Certificate, ClientTlsConfig};
    ///
    /// let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    /// let channel = tonic_etcd::EtcdDiscover::new(client, "greeter")
    ///     .tls(tls)
    ///     .channel();
    /// # drop(channel);
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.configure(|c| c.endpoint_hook.tls = Some(recipe::BackendTls::Tonic(config)))
    }

    /// The backoff between retries while etcd fails. Default: 100 ms doubling to 2 s, with
    /// jitter.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.configure(|c| c.settings.backoff = backoff)
    }

    /// How long a list or a watch request to etcd may take. Default: 5 s. Zero, with which
    /// every request would fail, makes the [`status`](EtcdDiscover::status) `Failed` with
    /// [`Error::InvalidDuration`] and the stream yield that error, as an invalid service
    /// does.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.configure(|c| c.settings.request_timeout = timeout)
    }

    /// How often an idle watch asks etcd for a progress notification. Default: 5 s.
    pub fn progress_interval(self, interval: Duration) -> Self {
        self.configure(|c| c.settings.progress_interval = interval.max(Duration::from_millis(10)))
    }

    /// How long a watch may stay silent, progress notifications included, before it is
    /// taken for dead, dropped and resumed. Default: 15 s. Zero, with which every watch
    /// would be dropped at once, fails like a zero
    /// [`request_timeout`](EtcdDiscover::request_timeout).
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.configure(|c| c.settings.idle_timeout = timeout)
    }

    /// A receiver of the discovery status, updated as it syncs, retries or fails.
    pub fn status(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        // The status carries the outcome; `into_stream` checks again.
        let _ = self.config.check();
        self
    }

    /// The service this discovers, as given.
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// The running discovery: a stream of changes, which starts its I/O on the first poll.
    /// The configuration is fixed from here on.
    ///
    /// Its first item is the error, and its last, if the configuration is invalid (see
    /// [`status`](EtcdDiscover::status)).
    pub fn into_stream(self) -> DiscoveryStream {
        let service = self.config.service.clone();
        let stream: ChangeStream = match self.config.check() {
            Ok(()) => run(self.config),
            Err(error) => Box::pin(futures_util::stream::iter([Err(error)])),
        };
        DiscoveryStream::new(service, stream, self.status)
    }
}

impl fmt::Debug for EtcdDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscover")
            .field("service", &self.config.service)
            .field("format", &self.config.format)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}
