//! Connecting to etcd: endpoints, TLS, credentials and timeouts, checked before use.

pub(crate) mod list;
pub(crate) mod request;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::time::Instant;

use crate::Error;
use request::request_until;

/// The key the probe reads (count only) to learn whether etcd wants credentials.
const PROBE_KEY: &str = "tonic-etcd/probe";

/// How to reach etcd: a consuming builder whose [`connect`](EtcdConfig::connect) returns a
/// client that has already answered.
///
/// Connecting checks everything it can before the client is handed out, so that a mistake
/// is a prompt, clear [`Error`] rather than retries later on:
///
/// - a wrong user name or password: [`Error::Authenticate`];
/// - no user, where etcd has authentication enabled: [`Error::AuthRequired`];
/// - with the `tls` feature, a missing or rejected client certificate, or a server
///   certificate the CA did not sign: [`Error::TlsHandshake`];
/// - a certificate or key that does not parse: [`Error::InvalidTlsConfig`];
/// - an etcd that does not answer within the [`deadline`](EtcdConfig::deadline):
///   [`Error::Connect`] with the last error, or [`Error::Timeout`].
///
/// - an endpoint that is not `http://host:port`, `https://host:port` or `host:port` (a
///   misspelt scheme such as `htp://`), or no endpoint at all: [`Error::InvalidEndpoint`],
///   before any I/O;
///
/// All but the last are [permanent](Error::is_permanent).
///
/// ```no_run
/// # async fn run() -> Result<(), tonic_etcd::Error> {
/// use tonic_etcd::{EtcdConfig, EtcdDiscover};
///
/// let etcd = EtcdConfig::new(["http://127.0.0.1:2379"])
///     .user("greeter-client", "secret")
///     .connect()
///     .await?;
/// let (channel, _discovery) = EtcdDiscover::new(etcd, "greeter").balance_channel();
/// # drop(channel);
/// # Ok(())
/// # }
/// ```
///
/// With the `tls` feature, `https://` endpoints use TLS, verified against the
/// `ca_certificate`, and `identity` presents a client certificate (etcd's
/// `--client-cert-auth`). An endpoint given without a scheme uses TLS when a TLS option is
/// set. Without the feature, an `https://` endpoint is an [`Error::InvalidTlsConfig`].
#[must_use]
#[derive(Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
    keep_alive_while_idle: bool,
    deadline: Duration,
    #[cfg(feature = "tls")]
    tls: tls::TlsSettings,
}

impl EtcdConfig {
    /// Connects to `endpoints`: URLs such as `http://10.0.0.1:2379`, or `https://` ones
    /// with the `tls` feature.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
            keep_alive_while_idle: false,
            deadline: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls: tls::TlsSettings::default(),
        }
    }

    /// Authenticates as `name` with `password` (etcd's `auth enable`). Default: none.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long opening one connection to a member may take. Default: 2 s. Zero makes
    /// [`connect`](EtcdConfig::connect) fail with [`Error::InvalidDuration`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long any one request to etcd may take. Watches and lease keep-alives are
    /// streams, which this does not cut short. Default: 5 s. Zero makes
    /// [`connect`](EtcdConfig::connect) fail with [`Error::InvalidDuration`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 pings every `interval`, and a connection that does not answer one within
    /// `timeout` is dropped. Default: every 10 s, 5 s timeout. etcd refuses pings more
    /// frequent than every 5 s. A zero interval or timeout makes
    /// [`connect`](EtcdConfig::connect) fail with [`Error::InvalidDuration`].
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Whether to ping while no request or stream is open. etcd counts such pings against
    /// the client unless it runs with `--grpc-keepalive-min-time` low enough. Default: no.
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.keep_alive_while_idle = enabled;
        self
    }

    /// How long [`connect`](EtcdConfig::connect) keeps trying an etcd that does not answer
    /// (one that is still starting, say) before it gives up. Default: 5 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Connects, authenticates if a user is set, and checks that etcd answers, retrying
    /// for up to the [`deadline`](EtcdConfig::deadline) while it does not. Errors that
    /// retrying cannot fix are returned at once.
    ///
    /// A member that is down or frozen does not fail the connect while another answers:
    /// each try goes through the crate's one-shot request path (a refused try is made again
    /// at once, an unanswered one gets a second one alongside after 300 ms).
    pub async fn connect(self) -> Result<Client, Error> {
        check_endpoints(&self.endpoints)?;
        self.check_durations()?;
        let options = self.options()?;
        let end = Instant::now() + self.deadline;
        let diagnosed = AtomicBool::new(false);
        let diagnose = async |error: Error| {
            if !error.is_permanent()
                && !diagnosed.swap(true, Ordering::Relaxed)
                && let Some(rejected) = self.diagnose().await
            {
                return rejected;
            }
            tracing::debug!(endpoints = %self.endpoints.join(","), error = %crate::error::Chain(&error), "etcd not ready");
            error
        };
        // A retry after a refusal keeps the client: a new one sends its first request to
        // whichever member is ready first, and a dead member, refusing at once, is. A hedge
        // (a probe still unanswered) gets a new client: the one in use may be stuck on a
        // frozen member.
        let first = request_until("connecting to etcd", end, || async {
            self.client(options.clone()).await
        });
        let current = match first.await {
            Ok(client) => client,
            Err(error) => return Err(diagnose(error).await),
        };
        let unanswered = AtomicUsize::new(0);
        request_until("connecting to etcd", end, || async {
            let client = match unanswered.fetch_add(1, Ordering::Relaxed) {
                0 => current.clone(),
                _ => match self.client(options.clone()).await {
                    Ok(client) => client,
                    Err(error) => return Err(diagnose(error).await),
                },
            };
            let probed = self.probe(client.clone()).await;
            unanswered.fetch_sub(1, Ordering::Relaxed);
            match probed {
                Ok(()) => Ok(client),
                Err(error) => Err(diagnose(error).await),
            }
        })
        .await
    }

    /// Refuses the zero timeouts and intervals with which every connection or request would
    /// fail. A zero [`deadline`](EtcdConfig::deadline) is fine: one try, no retry.
    fn check_durations(&self) -> Result<(), Error> {
        let (interval, timeout) = self.keep_alive.unwrap_or((Duration::MAX, Duration::MAX));
        for (setting, value, reason) in [
            (
                "connect timeout",
                self.connect_timeout,
                "every connection would time out at once",
            ),
            (
                "request timeout",
                self.request_timeout,
                "every request would time out at once",
            ),
            (
                "keep-alive interval",
                interval,
                "etcd closes a connection pinged that often",
            ),
            (
                "keep-alive timeout",
                timeout,
                "every connection would be dropped at the first ping",
            ),
        ] {
            if value.is_zero() {
                return Err(Error::InvalidDuration {
                    setting,
                    value,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The client, which authenticates if a user is set.
    async fn client(&self, options: ConnectOptions) -> Result<Client, Error> {
        match Client::connect(&self.endpoints, Some(options)).await {
            Ok(client) => Ok(client),
            Err(error) if auth_not_enabled(&error) => {
                // What etcd's Go client does too: credentials for an etcd without auth.
                tracing::warn!(endpoints = %self.endpoints.join(","), "etcd has authentication disabled: ignoring the user");
                let options = self.base_options()?;
                Client::connect(&self.endpoints, Some(options))
                    .await
                    .map_err(|e| self.connect_error(e))
            }
            Err(error) => Err(self.classify(error)),
        }
    }

    /// Asks etcd for its status and, without a user, whether it wants one.
    async fn probe(&self, mut client: Client) -> Result<(), Error> {
        client.status().await.map_err(|e| self.connect_error(e))?;
        if self.user.is_none() {
            let options = GetOptions::new().with_count_only();
            match client.get(PROBE_KEY, Some(options)).await {
                Ok(_) => {}
                // Authenticated (by a client certificate), just not allowed to read here.
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::PermissionDenied => {}
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("user name is empty") =>
                {
                    return Err(Error::AuthRequired {
                        endpoints: self.endpoints.join(","),
                    });
                }
                Err(error) => return Err(self.connect_error(error)),
            }
        }
        Ok(())
    }

    /// An error from `Client::connect`: with a user set, a refusal is about the credentials.
    fn classify(&self, error: etcd_client::Error) -> Error {
        match &self.user {
            Some((user, _)) if refused_credentials(&error) => Error::Authenticate {
                user: user.clone(),
                source: Arc::new(error),
            },
            _ => self.connect_error(error),
        }
    }

    fn connect_error(&self, error: etcd_client::Error) -> Error {
        let endpoints = self.endpoints.join(",");
        match &error {
            etcd_client::Error::GRpcStatus(status)
                if crate::error::is_certificate_error(&error) =>
            {
                Error::TlsHandshake {
                    endpoint: endpoints,
                    reason: format!("etcd's certificate is not trusted ({})", status.message()),
                }
            }
            _ => Error::Connect {
                endpoints,
                source: Arc::new(error),
            },
        }
    }

    /// etcd-client's options, credentials included.
    fn options(&self) -> Result<ConnectOptions, Error> {
        let options = self.base_options()?;
        Ok(match &self.user {
            // Simple tokens expire after 5 minutes unused: get a new one then.
            Some((name, password)) => options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true),
            None => options,
        })
    }

    /// etcd-client's options without the credentials.
    fn base_options(&self) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive_while_idle(self.keep_alive_while_idle);
        if let Some((interval, timeout)) = self.keep_alive {
            options = options.with_keep_alive(interval, timeout);
        }
        self.with_tls(options)
    }

    #[cfg(feature = "tls")]
    fn with_tls(&self, options: ConnectOptions) -> Result<ConnectOptions, Error> {
        self.tls.apply(options, &self.endpoints)
    }

    #[cfg(not(feature = "tls"))]
    fn with_tls(&self, options: ConnectOptions) -> Result<ConnectOptions, Error> {
        match self.endpoints.iter().find(|e| e.starts_with("https://")) {
            Some(endpoint) => Err(Error::InvalidTlsConfig {
                reason: format!("{endpoint} needs tonic-etcd's `tls` feature"),
            }),
            None => Ok(options),
        }
    }

    /// Looks for a TLS handshake failure that tonic reports only as a closed connection.
    #[cfg(feature = "tls")]
    async fn diagnose(&self) -> Option<Error> {
        self.tls
            .diagnose(&self.endpoints, self.connect_timeout)
            .await
    }

    #[cfg(not(feature = "tls"))]
    async fn diagnose(&self) -> Option<Error> {
        None
    }
}

/// Checks, before any I/O, that each endpoint is a URL etcd-client can connect to:
/// `http://` or `https://` (in lower case, as etcd-client matches them) and `host:port`, or
/// `host:port` alone, with a numeric port and nothing after it but an optional `/`.
/// etcd-client would prefix anything else with `http://`, so that `htp://10.0.0.1:2379`
/// became a lookup of the host `htp` that fails after the deadline, and would dial port 80
/// for `http://10.0.0.1:2380x` or `http://10.0.0.1`.
fn check_endpoints(endpoints: &[String]) -> Result<(), Error> {
    if endpoints.is_empty() {
        return Err(Error::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no etcd endpoint was given",
        });
    }
    for endpoint in endpoints {
        if let Err(reason) = check_endpoint(endpoint) {
            return Err(Error::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason,
            });
        }
    }
    Ok(())
}

/// Why `endpoint` is not `[http[s]://]host:port[/]`, if it is not.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let rest = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some(_) => return Err("its scheme is not http:// or https://"),
        None => endpoint,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if authority.is_empty()
        || authority.contains('@')
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return Err("it does not name a host and port");
    }
    if !after.is_empty() && after != "/" {
        return Err("it has a path or query: give only scheme://host:port");
    }
    // `[::1]:2379`, `host:2379`: the port follows the last colon, outside the brackets.
    let port = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.contains(']') && (!host.contains(':') || host.ends_with(']')) =>
        {
            port
        }
        _ => return Err("its port is missing (etcd's client port is usually 2379)"),
    };
    match port.parse::<u16>() {
        Ok(1..) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err("its port is not a number from 1 to 65535"),
    }
}

/// Whether etcd turned down the user name or password.
fn refused_credentials(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("authentication failed")
            || s.message().contains("user name not found"))
}

/// Whether etcd said that it has no authentication to do.
fn auth_not_enabled(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("authentication is not enabled"))
}

impl fmt::Debug for EtcdConfig {
    /// Shows no password and no key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EtcdConfig");
        d.field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("deadline", &self.deadline);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_password() {
        let config = EtcdConfig::new(["http://127.0.0.1:2379"]).user("alice", "s3cret");
        let debug = format!("{config:?}");
        assert!(
            debug.contains("alice") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    #[test]
    fn endpoints_are_checked_before_any_io() {
        let ok = |list: &[&str]| {
            check_endpoints(&list.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.etcd:2379",
            "http://[::1]:2379/",
            "127.0.0.1:2379",
            "localhost:2379",
        ] {
            assert!(ok(&[good]).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("http://127.0.0.1:2380x", "port is not a number"),
            ("http://127.0.0.1:0", "port is not a number"),
            ("http://127.0.0.1:99999", "port is not a number"),
            ("http://127.0.0.1:+2379", "port is not a number"),
            ("http://127.0.0.1", "port is missing"),
            ("http://[::1]", "port is missing"),
            ("etcd-0.etcd", "port is missing"),
            ("http://127.0.0.1:2379/v3", "path or query"),
            ("http://127.0.0.1:2379?x=1", "path or query"),
            ("htp://127.0.0.1:2379", "scheme"),
            ("HTTP://127.0.0.1:2379", "scheme"),
            ("unix:///tmp/etcd.sock", "scheme"),
            ("http://", "host and port"),
            ("", "host and port"),
            ("127.0.0.1 2379", "host and port"),
            ("http://user@127.0.0.1:2379", "host and port"),
        ] {
            let error = ok(&["http://127.0.0.1:2379", bad]).expect_err(bad);
            assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error}");
            assert!(error.to_string().contains(says), "{bad}: {error}");
            assert!(error.is_permanent());
        }
        assert!(ok(&[]).is_err(), "no endpoint");
    }

    #[tokio::test]
    async fn zero_timeouts_fail_before_any_io() {
        let config = || EtcdConfig::new(["http://127.0.0.1:9"]);
        let zero = Duration::ZERO;
        for (config, says) in [
            (config().connect_timeout(zero), "connect timeout"),
            (config().request_timeout(zero), "request timeout"),
            (
                config().keep_alive(zero, Duration::from_secs(1)),
                "keep-alive interval",
            ),
            (
                config().keep_alive(Duration::from_secs(10), zero),
                "keep-alive timeout",
            ),
        ] {
            let Err(error) = config.connect().await else {
                panic!("{says}: connected");
            };
            assert!(matches!(error, Error::InvalidDuration { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid {says} 0 s")),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn a_misspelt_scheme_fails_at_once() {
        let started = std::time::Instant::now();
        let connected = EtcdConfig::new(["htp://127.0.0.1:2379"]).connect().await;
        let Err(error) = connected else {
            panic!("htp is no scheme");
        };
        assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let error = EtcdConfig::new(["https://127.0.0.1:2379"])
            .options()
            .expect_err("no tls without the feature");
        assert!(matches!(error, Error::InvalidTlsConfig { .. }), "{error}");
        assert!(error.is_permanent());
    }
}
