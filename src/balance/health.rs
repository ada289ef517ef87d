//! Optional active health checks: `grpc.health.v1.Health/Check` on every connected endpoint.

use std::time::Duration;

use super::conn::Conn;

/// How to check an endpoint's health, when asked to.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "health"), allow(dead_code))]
pub(crate) struct HealthCheck {
    pub(crate) service: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

#[cfg(feature = "health")]
impl super::Balancer {
    /// Checks the health of every connected endpoint (the [`subset`](super::Balancer::subset))
    /// actively, with `grpc.health.v1.Health/Check` for `service` (`""` for the whole
    /// server) every `interval`: an endpoint comes into rotation only once it reports
    /// `SERVING`, and leaves it when a check fails or takes longer than the interval (at
    /// most 5 s). Default: no active checks; failures are still detected passively, from
    /// the calls themselves.
    ///
    /// Requires the `health` feature.
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn health_check(mut self, service: impl Into<String>, interval: Duration) -> Self {
        self.health_check = Some(HealthCheck {
            service: service.into(),
            interval,
            timeout: interval.min(Duration::from_secs(5)),
        });
        self
    }
}

/// Checks the endpoint once: `true` if it reports `SERVING` within the timeout.
#[cfg(feature = "health")]
pub(crate) async fn passes(conn: &Conn, check: &HealthCheck) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut client = HealthClient::new(conn.clone());
    let request = HealthCheckRequest {
        service: check.service.clone(),
    };
    match tokio::time::timeout(check.timeout, client.check(request)).await {
        Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
        Ok(Err(status)) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(timeout = ?check.timeout, "health check timed out");
            false
        }
    }
}

#[cfg(not(feature = "health"))]
pub(crate) async fn passes(_conn: &Conn, _check: &HealthCheck) -> bool {
    true
}

/// Checks the endpoint every interval; returns once a check fails. Never returns without a
/// check to make.
pub(crate) async fn until_unhealthy(conn: &Conn, check: Option<&HealthCheck>) {
    let Some(check) = check else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(check.interval).await;
        if !passes(conn, check).await {
            return;
        }
    }
}
