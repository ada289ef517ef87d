//! Following a tonic-health reporter: a service that is not serving gets no calls.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{Instrument, debug, info, warn};

use super::Registration;
use super::lease::Command;

/// How often to look again for a service the reporter does not know yet.
const UNKNOWN_SERVICE_RETRY: Duration = Duration::from_millis(500);

/// How long a service may stay unknown to the reporter before a warning says so: long
/// enough for a server to set its statuses after it starts following them.
const UNKNOWN_SERVICE_WARNING: Duration = Duration::from_secs(3);

impl Registration {
    /// Follows the health of `service_name` (for example `"helloworld.Greeter"`, the name
    /// tonic-health's `set_serving::<GreeterServer<_>>()` uses) as `reporter` sets it: when it
    /// goes `NOT_SERVING` the keys are taken out of etcd, keeping the lease; when it is
    /// `SERVING` again they are put back. The task is owned by the registration and stops
    /// with it.
    ///
    /// While the reporter has no status for `service_name`, the keys stay as they are. If it
    /// still has none 3 s after this call, a `warn!` names the service, since a misspelt
    /// name would otherwise do nothing, silently; an `info!` follows if the reporter learns
    /// of it later.
    ///
    /// Requires the `health` feature.
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn follow_health(&mut self, reporter: &HealthReporter, service_name: impl Into<String>) {
        let service = HealthService::from_health_reporter(reporter.clone());
        let name = service_name.into();
        let span = tracing::info_span!("tonic_etcd::health", service = %name);
        let follow = follow(service, name, self.commands.clone());
        let mut stop = self.stop_receiver();
        let task = tokio::spawn(
            async move {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => {}
                    _ = follow => {}
                }
            }
            .instrument(span),
        );
        self.own(task);
    }
}

async fn follow(service: HealthService, name: String, commands: mpsc::Sender<Command>) {
    let warn_at = Instant::now() + UNKNOWN_SERVICE_WARNING;
    let mut warned = false;
    loop {
        let request = tonic::Request::new(HealthCheckRequest {
            service: name.clone(),
        });
        let mut statuses = match service.watch(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if !warned && Instant::now() >= warn_at {
                    warned = true;
                    warn!(service = %name, "the health reporter has no status for this service: its keys stay registered whatever its health; tonic-health names a service by its full protobuf name, such as \"helloworld.Greeter\"");
                } else {
                    debug!(message = status.message(), "health not reported yet");
                }
                tokio::time::sleep(UNKNOWN_SERVICE_RETRY).await;
                continue;
            }
        };
        if std::mem::take(&mut warned) {
            info!(service = %name, "the health reporter now has a status for this service");
        }
        while let Some(Ok(response)) = statuses.next().await {
            let serving = response.status == ServingStatus::Serving as i32;
            debug!(serving, "health changed");
            let (reply, done) = tokio::sync::oneshot::channel();
            let command = Command::Withdraw {
                withdraw: !serving,
                reply,
            };
            if commands.send(command).await.is_err() {
                return;
            }
            // Failures are the lease task's to retry; this only keeps the order.
            let _ = done.await;
        }
    }
}
