//! `tonic-etcd probe`: `grpc.health.v1.Health/Check` on each instance, with its latency.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::listing::Row;

/// How to call the instances.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The health service name to ask about; empty for the server as a whole.
    pub service: String,
    /// Bound on connecting plus the call.
    pub timeout: Duration,
    /// Call every instance over TLS, trusting this CA (else only instances registered as TLS).
    pub tls_ca: Option<PathBuf>,
}

/// The result of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The etcd key.
    pub key: String,
    /// The address called.
    pub addr: String,
    /// `SERVING`, `NOT_SERVING`, `SERVICE_UNKNOWN`, `UNKNOWN`, or `error: ...`.
    pub status: String,
    /// Milliseconds from the start of the connection to the answer, if one came.
    pub latency_ms: Option<f64>,
}

impl Probe {
    /// Whether the instance answered `SERVING`.
    pub fn serving(&self) -> bool {
        self.status == "SERVING"
    }
}

/// Probes every decodable row at once.
pub async fn probe_all(rows: &[Row], settings: &ProbeSettings) -> Vec<Probe> {
    let probes = rows.iter().filter_map(|row| {
        let addr = row.addr.clone()?;
        Some(probe(row.key.clone(), addr, row.tls, settings))
    });
    futures_util::future::join_all(probes).await
}

async fn probe(key: String, addr: String, tls: bool, settings: &ProbeSettings) -> Probe {
    let start = Instant::now();
    let status = match tokio::time::timeout(settings.timeout, check(&addr, tls, settings)).await {
        Ok(Ok(status)) => status,
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => format!("error: no answer within {:?}", settings.timeout),
    };
    let latency_ms = (!status.starts_with("error"))
        .then(|| (start.elapsed().as_secs_f64() * 1e4).round() / 10.0);
    Probe {
        key,
        addr,
        status,
        latency_ms,
    }
}

async fn check(addr: &str, tls: bool, settings: &ProbeSettings) -> Result<String, String> {
    let secure = tls || settings.tls_ca.is_some();
    let scheme = if secure { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(settings.timeout);
    let endpoint = tls_config(endpoint, secure, settings)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("unreachable: {}", crate::etcd::chain(&e)))?;
    let request = HealthCheckRequest {
        service: settings.service.clone(),
    };
    let response = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let status = ServingStatus::try_from(response.into_inner().status)
        .map_or("UNKNOWN", |s| s.as_str_name());
    Ok(status.to_owned())
}

#[cfg(feature = "tls")]
fn tls_config(
    endpoint: Endpoint,
    secure: bool,
    settings: &ProbeSettings,
) -> Result<Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    if !secure {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &settings.tls_ca {
        let pem = crate::etcd::read_pem(ca, "--tls-ca")?;
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    endpoint.tls_config(config).map_err(|e| format!("tls: {e}"))
}

#[cfg(not(feature = "tls"))]
fn tls_config(endpoint: Endpoint, secure: bool, _: &ProbeSettings) -> Result<Endpoint, String> {
    match secure {
        true => Err("a TLS instance needs the `tls` feature (on by default)".into()),
        false => Ok(endpoint),
    }
}
