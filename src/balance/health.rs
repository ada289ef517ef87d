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
