//! [`EtcdConfig::connect`]: every member probed on its own, the first to answer serves.
//!
//! etcd-client spreads its requests over its endpoints at random, and a frozen member
//! (stopped by SIGSTOP, stuck on a disk) still accepts TCP connections: its lazy HTTP/2
//! connection looks ready, and a request sent there waits for its timeout. A probe through a
//! client that knows every member may land there, and so may each hedge of it. So each
//! member is probed through a client of its own that knows only that member, all at once,
//! and the first that answers wins: a dead or frozen member costs nothing while another
//! answers. The client handed out is the winner's, which has authenticated there and holds
//! an open connection to it, with the other members added; a later request that lands on a
//! frozen member is hedged by the one-shot [`request`](super::request) path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_client::{Client, ConnectOptions, GetOptions};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::EtcdConfig;
use super::endpoint::check_endpoints;
use crate::backoff::{Backoff, Retry};
use crate::error::Chain;
use crate::error::Error;

/// The key the probe reads (count only) to learn whether etcd wants credentials.
const PROBE_KEY: &str = "tonic-etcd/probe";

/// What connecting is called in a timeout.
const OPERATION: &str = "connecting to etcd";

/// The spacing of probes of a member that refuses (one still starting, say).
fn member_backoff() -> Backoff {
    Backoff::default()
        .initial(std::time::Duration::from_millis(20))
        .max(std::time::Duration::from_millis(500))
}

impl EtcdConfig {
    /// Connects, authenticates if a user is set, and checks that etcd answers, retrying
    /// for up to the [`deadline`](EtcdConfig::deadline) while it does not. Errors that
    /// retrying cannot fix are returned at once.
    ///
    /// A member that is down or frozen does not fail or slow the connect while another
    /// answers: every member is probed at once, each through a connection of its own, and
    /// the first to answer is the one the client starts on. The client still knows every
    /// member, and moves to another when one fails.
    pub async fn connect(self) -> Result<Client, Error> {
        check_endpoints(&self.endpoints)?;
        self.check_durations()?;
        let options = self.options()?;
        let end = Instant::now() + self.deadline;
        let (winner, client) = self.first_to_answer(&options, end).await?;
        for endpoint in self.endpoints.iter().filter(|e| **e != *winner) {
            client
                .add_endpoint(endpoint)
                .await
                .map_err(|e| self.connect_error(e))?;
        }
        tracing::debug!(endpoint = %winner, "connected to etcd");
        Ok(client)
    }

    /// Probes every member at once; returns the first to answer and its client. A permanent
    /// error from one member (its certificate not trusted, say) does not end the others'
    /// probes: it is returned only when no member answers, before any other error.
    async fn first_to_answer<'a>(
        &'a self,
        options: &ConnectOptions,
        end: Instant,
    ) -> Result<(&'a String, Client), Error> {
        let diagnosed = AtomicBool::new(false);
        let mut probes: FuturesUnordered<_> = self
            .endpoints
            .iter()
            .map(|endpoint| {
                let diagnosed = &diagnosed;
                async move {
                    let probed = self.probe_member(endpoint, options, end, diagnosed);
                    (endpoint, probed.await)
                }
            })
            .collect();
        let mut last: Option<Error> = None;
        let mut permanent: Option<Error> = None;
        while let Some((endpoint, probed)) = probes.next().await {
            match probed {
                Ok(client) => return Ok((endpoint, client)),
                Err(error) if error.is_permanent() => {
                    tracing::warn!(endpoint, error = %Chain(&error), "etcd member refused for good; trying the others");
                    permanent.get_or_insert(error);
                }
                // A timeout says less than why a member refused.
                Err(Error::Timeout { .. }) if last.is_some() => {}
                Err(error) => last = Some(error),
            }
        }
        Err(permanent.or(last).unwrap_or(Error::Timeout {
            operation: OPERATION,
            after: self.deadline,
        }))
    }

    /// Probes `endpoint` alone, through a client that knows only it, until it answers,
    /// gives an answer every member would give, or `end` passes.
    async fn probe_member(
        &self,
        endpoint: &str,
        options: &ConnectOptions,
        end: Instant,
        diagnosed: &AtomicBool,
    ) -> Result<Client, Error> {
        let mut retry = Retry::new(member_backoff());
        let mut last = None;
        loop {
            let attempt = async {
                let client = self.client(endpoint, options.clone()).await?;
                self.probe(client.clone()).await.map(|()| client)
            };
            let error = match tokio::time::timeout_at(end, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(error)) => self.diagnosed(error, diagnosed).await,
                Err(_) => {
                    return Err(last.unwrap_or(Error::Timeout {
                        operation: OPERATION,
                        after: self.deadline,
                    }));
                }
            };
            let delay = retry.next_delay();
            tracing::debug!(endpoint, ?delay, error = %Chain(&error), "etcd member not ready");
            if error.is_permanent() || Instant::now() + delay >= end {
                return Err(error);
            }
            last = Some(error);
            tokio::time::sleep(delay).await;
        }
    }

    /// `error`, or, the first time a transient one comes, the TLS rejection it hides.
    async fn diagnosed(&self, error: Error, diagnosed: &AtomicBool) -> Error {
        if !error.is_permanent()
            && !diagnosed.swap(true, Ordering::Relaxed)
            && let Some(rejected) = self.diagnose().await
        {
            return rejected;
        }
        error
    }

    /// A client of `endpoint` alone, which authenticates there if a user is set.
    async fn client(&self, endpoint: &str, options: ConnectOptions) -> Result<Client, Error> {
        match Client::connect([endpoint], Some(options)).await {
            Ok(client) => Ok(client),
            Err(error) if auth_not_enabled(&error) => {
                // What etcd's Go client does too: credentials for an etcd without auth.
                tracing::warn!(
                    endpoint,
                    "etcd has authentication disabled: ignoring the user"
                );
                let options = self.base_options()?;
                Client::connect([endpoint], Some(options))
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
