//! Connecting to the subset's members: the [`Connector`] the driver calls for each endpoint
//! that joins (linkerd's `NewService` is the model), and the connect loop behind the real
//! one.
//!
//! A member's connector task connects, and reconnects after every ejection, with jittered
//! backoff between probes, for as long as the endpoint stays in the subset; the driver drops
//! the [`Task`] when it leaves, which stops it. With a health check, an endpoint must also
//! report `SERVING` to come up, and is ejected when a later check fails.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info};

use super::Balancer;
use super::backend::Backend;
use super::conn::{Conn, Target};
use super::direct::KeepAlive;
use super::health::{self, HealthCheck};
use crate::backoff::{Backoff, Retry};
use crate::metrics::Ejection;

/// Makes the connections of the subset's members.
pub(super) trait Connector: Send + 'static {
    /// Starts connecting to `backend`, already marked connecting, at `target`: the task
    /// sets it up or ejected as it fares.
    fn connect(&self, backend: Arc<Backend>, target: Target) -> Task;
}

/// A member's connector task; stopped when dropped.
#[derive(Debug)]
pub(super) struct Task(JoinHandle<()>);

impl Task {
    pub(super) fn spawn<F>(future: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Task(tokio::spawn(future))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the connect loop needs of the [`Balancer`]'s settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) probe_backoff: Backoff,
    pub(super) health_check: Option<HealthCheck>,
    pub(super) keep_alive: Option<KeepAlive>,
}

impl Settings {
    pub(super) fn new(config: &Balancer) -> Self {
        Settings {
            probe_backoff: config.probe_backoff,
            health_check: config.health_check.clone(),
            keep_alive: config.keep_alive,
        }
    }
}

/// The real connector: the balancer's own connection or tonic's channel.
#[derive(Debug)]
pub(super) struct Connect(pub(super) Settings);

impl Connector for Connect {
    fn connect(&self, backend: Arc<Backend>, target: Target) -> Task {
        let span = tracing::debug_span!("tonic_etcd::connect", key = %backend.key);
        Task::spawn(connect_loop(backend, target, self.0.clone()).instrument(span))
    }
}

/// The longest wait between probes of an endpoint that has never been reached.
const NEVER_CONNECTED_MAX: Duration = Duration::from_secs(60);

/// How long a connection must stay up to reset the probe backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

async fn connect_loop(backend: Arc<Backend>, target: Target, settings: Settings) {
    let mut retry = Retry::new(settings.probe_backoff);
    // An endpoint that never answered is most likely a stale registration: probe it more
    // and more rarely, so thousands of them do not keep a core busy.
    let mut stale = Retry::new(settings.probe_backoff.max(NEVER_CONNECTED_MAX));
    let mut ever_connected = false;
    loop {
        let attempt = target
            .connect(&backend.instance.addr, settings.keep_alive)
            .await;
        match attempt {
            Ok((conn, closed)) if healthy(&conn, settings.health_check.as_ref()).await => {
                ever_connected = true;
                crate::metrics::connection_attempt(backend.service(), true);
                if retry.attempt() > 0 {
                    info!(key = %backend.key, addr = %backend.instance.addr, "endpoint readmitted");
                    crate::metrics::readmission(backend.service());
                }
                let connected = Instant::now();
                serve(&backend, conn, closed, settings.health_check.as_ref()).await;
                if connected.elapsed() >= STABLE_AFTER {
                    retry.reset();
                }
            }
            Ok(_) => {
                ever_connected = true;
                debug!(key = %backend.key, "endpoint is not serving");
                crate::metrics::connection_attempt(backend.service(), false);
                backend.set_ejected();
            }
            Err(error) => {
                debug!(key = %backend.key, error = %crate::error::Chain(&*error), "connect failed");
                crate::metrics::connection_attempt(backend.service(), false);
                backend.set_ejected();
            }
        }
        let delay = match ever_connected {
            true => retry.next_delay(),
            false => stale.next_delay(),
        };
        tokio::time::sleep(delay).await;
    }
}

/// Puts the connection in rotation until it fails: ejected by a call, failing a health
/// check, or closed (our own connection tells when it closes, before any call fails on it).
async fn serve(
    backend: &Backend,
    conn: Conn,
    closed: Option<tokio::sync::oneshot::Receiver<()>>,
    check: Option<&HealthCheck>,
) {
    backend.set_up(conn.clone());
    let closed = async {
        match closed {
            Some(closed) => {
                let _ = closed.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = backend.ejected() => {}
        _ = health::until_unhealthy(&conn, check) => backend.eject(Ejection::HealthCheck),
        () = closed => {
            debug!(key = %backend.key, "connection closed");
            backend.eject(Ejection::Transport);
        }
    }
}

async fn healthy(conn: &Conn, check: Option<&HealthCheck>) -> bool {
    match check {
        Some(check) => health::passes(conn, check).await,
        None => true,
    }
}
