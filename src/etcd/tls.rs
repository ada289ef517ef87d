//! TLS to etcd: the settings, their checks, and the diagnosis of a refused handshake.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::EtcdConfig;
use crate::error::Error;
use crate::tls::is_certificate_alert;

/// How long the diagnosis waits for etcd's verdict on the client certificate, which TLS 1.3
/// sends after the handshake.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(1);

/// The TLS options of an [`EtcdConfig`].
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
impl EtcdConfig {
    /// The CA certificate (PEM) that etcd's server certificate must be signed by.
    /// Default: none, so only the roots of tonic's `tls-native-roots` or
    /// `tls-webpki-roots` features, if enabled, are trusted.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// The client certificate chain and its private key (PEM, PKCS#8, PKCS#1 or SEC1), for
    /// an etcd that runs with `--client-cert-auth`. Default: none.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name etcd's certificate must be valid for. Default: the host of each endpoint.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls.domain = Some(name.into());
        self
    }
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.domain.is_some()
    }

    /// Adds the TLS options to `options` if an endpoint is `https://` or a TLS option is
    /// set, after checking the PEM text and the endpoints' schemes.
    pub(super) fn apply(
        &self,
        options: ConnectOptions,
        endpoints: &[String],
    ) -> Result<ConnectOptions, Error> {
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        if !https && !self.is_set() {
            return Ok(options);
        }
        if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(invalid(format!(
                "tls is configured, but endpoint {plain} is not https://"
            )));
        }
        let tls = self.options()?;
        // Parse now, so that a bad certificate or key is reported as such.
        tonic::transport::Endpoint::from_static("https://localhost")
            .tls_config(tls.clone())
            .map_err(|e| invalid(crate::error::Chain(&e).to_string()))?;
        Ok(options.with_tls(tls))
    }

    fn options(&self) -> Result<TlsOptions, Error> {
        let mut tls = TlsOptions::new().with_enabled_roots();
        if let Some(ca) = &self.ca {
            require_pem(ca, "CERTIFICATE", "the ca certificate")?;
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            require_pem(cert, "CERTIFICATE", "the client certificate")?;
            require_pem(key, "PRIVATE KEY", "the client key")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }

    /// Finds out whether etcd refuses the TLS handshake itself. tonic reports a refused
    /// client certificate only as a closed connection, so this handshakes with each
    /// `https://` endpoint directly and waits briefly for an alert.
    ///
    /// Needs the CA: without it, it finds nothing.
    pub(super) async fn diagnose(&self, endpoints: &[String], timeout: Duration) -> Option<Error> {
        let config = Arc::new(self.client_config()?);
        for endpoint in endpoints {
            let Some(reason) = self.handshake(config.clone(), endpoint, timeout).await else {
                continue;
            };
            return Some(Error::TlsHandshake {
                endpoint: endpoint.clone(),
                reason,
            });
        }
        None
    }

    /// One handshake with `endpoint`; what went wrong, if it was refused.
    async fn handshake(
        &self,
        config: Arc<ClientConfig>,
        endpoint: &str,
        timeout: Duration,
    ) -> Option<String> {
        let uri: http::Uri = endpoint.parse().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16()?;
        let name = self.domain.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned()).ok()?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let mut tls = connector.connect(name, tcp).await?;
            let mut byte = [0u8; 1];
            // TLS 1.3 servers judge the client certificate after the handshake.
            match tokio::time::timeout(VERDICT_TIMEOUT, tls.read(&mut byte)).await {
                Ok(read) => read.map(drop),
                Err(_) => Ok(()),
            }
        };
        let error = match tokio::time::timeout(timeout + VERDICT_TIMEOUT, handshake).await {
            Ok(Err(error)) => error,
            Ok(Ok(())) | Err(_) => return None,
        };
        let rustls_error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
        self.explain(rustls_error)
    }

    /// Says what a TLS error means for the user, if it is about certificates.
    fn explain(&self, error: &rustls::Error) -> Option<String> {
        match error {
            rustls::Error::InvalidCertificate(e) => {
                Some(format!("etcd's certificate is not trusted ({e:?})"))
            }
            rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
                Some(match self.identity {
                    None => format!(
                        "etcd requires a client certificate, and none was given (alert {alert:?})"
                    ),
                    Some(_) => format!("etcd rejected the client certificate (alert {alert:?})"),
                })
            }
            _ => None,
        }
    }

    /// A rustls configuration like tonic's, trusting only the given CA.
    fn client_config(&self) -> Option<ClientConfig> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_deref()?) {
            roots.add(cert.ok()?).ok()?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                let key = PrivateKeyDer::from_pem_slice(key).ok()?;
                builder.with_client_auth_cert(chain, key).ok()?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Some(config)
    }
}

/// Checks that `pem` holds a PEM block whose label ends with `label`.
fn require_pem(pem: &[u8], label: &str, what: &str) -> Result<(), Error> {
    let text = String::from_utf8_lossy(pem);
    let found = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .any(|rest| rest.trim_end_matches('-').ends_with(label));
    if found {
        Ok(())
    } else {
        Err(invalid(format!("{what} holds no PEM {label} block")))
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidTlsConfig { reason }
}

impl fmt::Debug for TlsSettings {
    /// Shows which options are set, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_recognised_by_label() {
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(require_pem(cert, "CERTIFICATE", "ca").is_ok());
        let key = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(require_pem(key, "PRIVATE KEY", "key").is_ok());
        let error = require_pem(key, "CERTIFICATE", "the ca certificate").unwrap_err();
        assert!(error.is_permanent());
        assert!(
            error
                .to_string()
                .contains("the ca certificate holds no PEM")
        );
    }

    #[test]
    fn tls_options_need_https_endpoints() {
        let settings = TlsSettings {
            domain: Some("etcd".into()),
            ..TlsSettings::default()
        };
        let endpoints = ["http://127.0.0.1:2379".to_owned()];
        let error = settings
            .apply(ConnectOptions::new(), &endpoints)
            .unwrap_err();
        assert!(matches!(error, Error::InvalidTlsConfig { .. }), "{error}");
    }
}
