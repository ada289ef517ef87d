//! Connecting to etcd: endpoints, TLS, credentials and timeouts, checked before use.

mod connect;
mod endpoint;
pub(crate) mod history;
pub(crate) mod list;
pub(crate) mod request;
pub(crate) mod seam;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::time::Duration;

use etcd_client::ConnectOptions;

use crate::error::Error;

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
