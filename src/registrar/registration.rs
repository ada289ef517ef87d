//! A live registration: the handle that owns the lease task and shuts the server down in
//! order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::lease::Command;
use super::{InFlightLayer, RegistrationStatus};
use crate::backoff::within;
use crate::error::Error;
use crate::etcd::request::request;
use crate::etcd::seam::lease::Leases;
use crate::format::{Format, Instance, check_instance, check_service};
use crate::inflight::InFlightCounter;

/// A live registration: owns the lease task, and shuts the server down in order.
///
/// Dropping it stops keeping the lease alive, so the keys expire after the TTL; it does no
/// I/O, and logs that it happened (`warn!` if nothing took its
/// [`stop_signal`](Registration::stop_signal), so the server may still be serving while it
/// disappears from etcd; else `info!`). Call [`shutdown`](Registration::shutdown) to remove
/// the keys at once.
///
/// Dropping it at once is a mistake the compiler points out:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # async fn run(registrar: tonic_etcd::Registrar) -> Result<(), tonic_etcd::Error> {
/// registrar.register("greeter", "127.0.0.1:50051").await?; // dropped: deregisters
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a registration stops its keep-alives: the key expires after the TTL"]
pub struct Registration {
    pub(super) key: String,
    /// etcd, through the crate's seam: the registrar's client, shared with the lease task.
    pub(super) etcd: Arc<dyn Leases>,
    /// The format, to check what [`add`](Registration::add) is given before any I/O.
    pub(super) format: Arc<dyn Format>,
    pub(super) status: Arc<watch::Sender<RegistrationStatus>>,
    /// The last lease granted (0: none), shared with the lease task.
    pub(super) lease: Arc<AtomicI64>,
    pub(super) counter: Arc<InFlightCounter>,
    pub(super) serving: watch::Sender<bool>,
    pub(super) commands: mpsc::Sender<Command>,
    /// Tells the owned tasks to stop; dropping it does too.
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    pub(super) grace: Duration,
    pub(super) drain_timeout: Duration,
    pub(super) request_timeout: Duration,
    /// The lease TTL, for the log line of a drop without shutdown.
    pub(super) ttl: Duration,
    /// Whether [`shutdown`](Registration::shutdown) ran, so a drop after it says nothing.
    pub(super) shut_down: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("status", &*self.status.borrow())
            .field("in_flight", &self.counter.get())
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The etcd key of the first instance, as registered. (A format that names keys after
    /// the lease, such as go-zero's, changes it when the lease is lost and granted again.)
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease currently holding the key, if registered.
    pub fn lease_id(&self) -> Option<i64> {
        match *self.status.borrow() {
            RegistrationStatus::Registered { lease_id } => Some(lease_id),
            _ => None,
        }
    }

    /// Registers one more instance under the same lease, so a process holds one lease
    /// whatever it registers. Returns its key once it is in etcd.
    ///
    /// The service and the address are checked first, with nothing written to etcd, as
    /// [`Registrar::register`](super::Registrar::register) checks them.
    ///
    /// Waits for the lease task, which serves it between keepalives; if etcd does not
    /// answer within the request timeout it fails with [`Error::Timeout`], and the instance
    /// may still be registered once etcd is back.
    pub async fn add(
        &self,
        service: impl Into<String>,
        instance: impl Into<Instance>,
    ) -> Result<String, Error> {
        let (service, instance) = (service.into(), instance.into());
        check_service(&self.format, &service)?;
        check_instance(&instance)?;
        let (reply, response) = oneshot::channel();
        let command = Command::Add {
            service,
            instance,
            reply,
        };
        self.command(command, response, "adding an instance").await
    }

    /// Takes the keys out of etcd while keeping the lease: for a server that is up but should
    /// get no calls for a while. Clients see the keys deleted and stop calling it; a crash
    /// meanwhile still ends the lease after its TTL. [`restore`](Registration::restore) puts
    /// them back. Returns once done; fails like [`add`](Registration::add).
    pub async fn withdraw(&self) -> Result<(), Error> {
        self.set_withdrawn(true, "withdrawing the keys").await
    }

    /// Puts the keys taken out by [`withdraw`](Registration::withdraw) back, under the same
    /// lease. Returns once done; fails like [`add`](Registration::add).
    pub async fn restore(&self) -> Result<(), Error> {
        self.set_withdrawn(false, "restoring the keys").await
    }

    async fn set_withdrawn(&self, withdraw: bool, operation: &'static str) -> Result<(), Error> {
        let (reply, response) = oneshot::channel();
        let command = Command::Withdraw { withdraw, reply };
        self.command(command, response, operation).await
    }

    async fn command<T>(
        &self,
        command: Command,
        response: oneshot::Receiver<Result<T, Error>>,
        operation: &'static str,
    ) -> Result<T, Error> {
        let exchange = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| Error::Stopped)?;
            response.await.map_err(|_| Error::Stopped)?
        };
        within(operation, self.request_timeout, exchange).await
    }

    /// A receiver of the registration status.
    pub fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.subscribe()
    }

    #[cfg_attr(not(feature = "health"), allow(dead_code))]
    pub(crate) fn stop_receiver(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    #[cfg_attr(not(feature = "health"), allow(dead_code))]
    pub(crate) fn own(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// The layer that counts in-flight calls: add it with `Server::builder().layer(..)`.
    pub fn layer(&self) -> InFlightLayer {
        InFlightLayer::new(self.counter.clone())
    }

    /// How many calls are in flight through [`layer`](Registration::layer).
    pub fn in_flight(&self) -> usize {
        self.counter.get()
    }

    /// A future that resolves when the server should stop accepting connections: during
    /// [`shutdown`](Registration::shutdown), after deregistering and the grace period, or
    /// when the registration is dropped. Pass it to `serve_with_shutdown` or
    /// `serve_with_incoming_shutdown`.
    pub fn stop_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut serving = self.serving.subscribe();
        async move {
            let _ = serving.wait_for(|serving| !serving).await;
        }
    }

    /// Shuts down in order: deregisters (revokes the lease, which deletes the key at once),
    /// waits the grace period for clients to see it, fires the
    /// [`stop_signal`](Registration::stop_signal), then waits for in-flight calls up to the
    /// drain timeout.
    ///
    /// If etcd cannot be reached, the server still drains and stops, the key expires with
    /// its lease, and the revoke error is returned.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shut_down = true;
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                debug!(error = %e, "registration task ended abnormally");
            }
        }
        let revoked = self.revoke().await;
        tokio::time::sleep(self.grace).await;
        self.serving.send_replace(false);
        let drained = tokio::time::timeout(self.drain_timeout, self.counter.idle()).await;
        match drained {
            Ok(()) => debug!(key = %self.key, "drained"),
            Err(_) => info!(
                key = %self.key,
                in_flight = self.counter.get(),
                "drain timed out"
            ),
        }
        revoked
    }

    async fn revoke(&mut self) -> Result<(), Error> {
        // Not `lease_id()`: while the lease task retries, the status names no lease, yet
        // the key is most likely still in etcd under the last one.
        let lease_id = match self.lease.load(Ordering::Acquire) {
            0 => return Ok(()),
            lease_id => lease_id,
        };
        let revoke = || async {
            let revoke = self.etcd.revoke(lease_id);
            revoke.await.map_err(|source| Error::Revoke {
                lease_id,
                source: Arc::new(source),
            })
        };
        let result = request("revoking the lease", self.request_timeout, revoke).await;
        match &result {
            Ok(()) => {
                info!(key = %self.key, lease_id, "deregistered");
                self.status.send_replace(RegistrationStatus::Deregistered);
                crate::metrics::registrar_status(&RegistrationStatus::Deregistered);
            }
            // The lease is gone already: so is the key.
            Err(e) if e.is_lease_not_found() => {
                self.status.send_replace(RegistrationStatus::Deregistered);
                crate::metrics::registrar_status(&RegistrationStatus::Deregistered);
                return Ok(());
            }
            Err(_) => {}
        }
        result
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Only signals: the tasks stop, and the keys expire with the lease.
        self.stop.send_replace(true);
        let ttl = crate::error::Secs(self.ttl);
        match dropped(self.shut_down, self.serving.receiver_count() > 0) {
            Dropped::Quietly => {}
            Dropped::ServerStops => info!(
                key = %self.key,
                %ttl,
                "registration dropped without shutdown: the server stops, its key stays in etcd until the lease expires"
            ),
            Dropped::ServerMayServe => warn!(
                key = %self.key,
                %ttl,
                "registration dropped without shutdown: its key expires with the lease while the server may still be serving; keep the registration and call shutdown()"
            ),
        }
    }
}

/// What dropping a registration means for its server.
#[derive(Debug, PartialEq, Eq)]
enum Dropped {
    /// After [`Registration::shutdown`]: everything was done in order.
    Quietly,
    /// The server waits on the stop signal, which the drop fires: it stops while its key
    /// stays in etcd until the lease expires.
    ServerStops,
    /// Nothing waits on the stop signal: the server may go on serving, soon unregistered.
    ServerMayServe,
}

fn dropped(shut_down: bool, stop_signal_taken: bool) -> Dropped {
    match (shut_down, stop_signal_taken) {
        (true, _) => Dropped::Quietly,
        (false, true) => Dropped::ServerStops,
        (false, false) => Dropped::ServerMayServe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::seam::fake::FakeEtcd;
    use crate::registrar::Registrar;

    /// A registration of one instance through `etcd`, on paused time.
    async fn register(etcd: &FakeEtcd) -> Registration {
        // Connecting does no I/O without a user; the registration reaches `etcd` instead.
        let client = etcd_client::Client::connect(["http://127.0.0.1:9"], None)
            .await
            .expect("a lazy client");
        let registrar = Registrar::new(client).grace(Duration::from_millis(100));
        let instance = Instance::new("127.0.0.1:50051");
        let registering =
            registrar.register_through(Arc::new(etcd.clone()), "svc".into(), instance);
        registering.await.expect("registered")
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_revokes_the_lease_through_the_seam() {
        let etcd = FakeEtcd::new();
        let registration = register(&etcd).await;
        let (key, lease_id) = (registration.key().to_owned(), registration.lease_id());
        let lease_id = lease_id.expect("registered");
        assert_eq!(etcd.lease_of(&key), Some(lease_id));
        let status = registration.status();
        registration.shutdown().await.expect("revoked");
        assert!(!etcd.has_lease(lease_id), "the lease is revoked");
        assert_eq!(etcd.lease_of(&key), None, "and its key deleted with it");
        assert!(matches!(*status.borrow(), RegistrationStatus::Deregistered));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_after_the_lease_is_gone_succeeds() {
        let etcd = FakeEtcd::new();
        let registration = register(&etcd).await;
        let lease_id = registration.lease_id().expect("registered");
        etcd.revoke_lease(lease_id);
        let status = registration.status();
        registration
            .shutdown()
            .await
            .expect("the key is gone already");
        assert!(matches!(*status.borrow(), RegistrationStatus::Deregistered));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_revoke_is_returned_and_the_server_still_stops() {
        let etcd = FakeEtcd::new();
        let registration = register(&etcd).await;
        let lease_id = registration.lease_id().expect("registered");
        let stopped = registration.stop_signal();
        etcd.fail_next(etcd_client::Error::GRpcStatus(
            tonic::Status::permission_denied("etcdserver: permission denied"),
        ));
        let error = registration.shutdown().await.expect_err("refused");
        assert!(
            matches!(error, Error::Revoke { lease_id: l, .. } if l == lease_id),
            "{error}"
        );
        let fired = tokio::time::timeout(Duration::ZERO, stopped).await;
        assert!(fired.is_ok(), "the stop signal fired all the same");
        assert!(etcd.has_lease(lease_id), "the lease is left to expire");
    }

    #[test]
    fn a_drop_without_shutdown_is_logged_by_what_the_server_does() {
        assert_eq!(dropped(true, true), Dropped::Quietly);
        assert_eq!(dropped(true, false), Dropped::Quietly);
        assert_eq!(dropped(false, true), Dropped::ServerStops);
        assert_eq!(dropped(false, false), Dropped::ServerMayServe);
    }
}
