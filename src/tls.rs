//! TLS to the discovered servers: the crate's own configuration, and the rustls client
//! configuration the balancer's own connections use.

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{AlertDescription, ClientConfig, RootCertStore};

/// The ALPN protocol id of HTTP/2: offered, and required of the server.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// TLS to the servers that discovery finds: the CA certificates that sign their
/// certificates, a client identity for mutual TLS, and the name their certificates must be
/// valid for. Give it to [`EtcdDiscover::tls_config`](crate::EtcdDiscover::tls_config).
///
/// The crate's own balancer ([`EtcdDiscover::channel`](crate::EtcdDiscover::channel))
/// feeds it to rustls on its own HTTP/2 connection: a call crosses no buffer task, and a call
/// that never left is retried elsewhere without a copy. tonic's balancer
/// ([`EtcdDiscover::balance_channel`](crate::EtcdDiscover::balance_channel)) and an
/// [`endpoint`](crate::EtcdDiscover::endpoint) hook get the same settings as tonic's
/// [`ClientTlsConfig`](tonic::transport::ClientTlsConfig).
///
/// Defaults, as tonic's with the `tls-ring` feature:
///
/// - **Roots: none.** Only the CA certificates given are trusted; no root store is bundled.
///   A configuration without any is invalid (see below).
/// - **Protocols:** TLS 1.3 and 1.2, rustls's safe defaults, with the process's default
///   rustls crypto provider, else *ring*.
/// - **ALPN:** `h2` is offered, and a server that does not select it is refused, as tonic
///   does.
/// - **Server name:** the host of each instance's registered address, so most often an IP
///   address, which the server's certificate must then name; see
///   [`domain_name`](TlsConfig::domain_name).
/// - **Client identity:** none.
///
/// An invalid configuration (no CA, text that holds no PEM certificate or key, a key that
/// does not match the certificate) does not fail discovery: each instance is skipped with a
/// `warn!` that names its key and says what is wrong, as for an undecodable value.
///
/// ```no_run
/// # fn f(client: tonic_etcd::etcd_client::Client, ca: &[u8], cert: &[u8], key: &[u8]) {
/// use tonic_etcd::{EtcdDiscover, TlsConfig};
///
/// let tls = TlsConfig::new().ca_certificate(ca).identity(cert, key);
/// let channel = EtcdDiscover::new(client, "greeter").tls_config(tls).channel();
/// # drop(channel);
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub struct TlsConfig {
    ca: Vec<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl TlsConfig {
    /// An empty configuration: add at least one CA certificate.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Trusts the CA certificate(s) in `pem` (one or more PEM `CERTIFICATE` blocks). Each
    /// call adds to the ones given before. Default: none.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(pem.into());
        self
    }

    /// The client certificate chain and its private key (PEM; PKCS#8, PKCS#1 or SEC1),
    /// presented to servers that ask for one (mutual TLS). Default: none.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name every server's certificate must be valid for, and the SNI sent. Default:
    /// the host of each instance's address.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// The same settings as tonic's configuration, for tonic's channel.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        for pem in &self.ca {
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }

    /// The rustls configuration, parsed once for every connection; the reason it is
    /// invalid otherwise.
    pub(crate) fn connector(&self) -> Result<Connector, String> {
        let mut roots = RootCertStore::empty();
        for pem in &self.ca {
            let certs = certificates(pem, "the ca certificate")?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("the ca certificate is not usable: {e}"))?;
            }
        }
        if roots.is_empty() {
            return Err("no ca certificate given, and no root store is bundled".to_owned());
        }
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(ring::default_provider()));
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("no tls version is available: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = certificates(cert, "the client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("the client key holds no usable PEM key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client identity is not usable: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let domain = match &self.domain {
            Some(name) => Some(server_name(name)?),
            None => None,
        };
        Ok(Connector {
            config: Arc::new(config),
            domain,
            identity: self.identity.is_some(),
        })
    }
}

impl fmt::Debug for TlsConfig {
    /// Shows what is set, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificates", &self.ca.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// The PEM certificates in `pem`; at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    match certs.is_empty() {
        true => Err(format!("{what} holds no PEM CERTIFICATE block")),
        false => Ok(certs),
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a valid dns name or ip address"))
}

/// A parsed configuration, shared by every connection; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) config: Arc<ClientConfig>,
    domain: Option<ServerName<'static>>,
    /// Whether a client certificate is presented, to explain a refusal.
    pub(crate) identity: bool,
}

impl Connector {
    /// The name to verify and send for a server at `host` (an IP address or a DNS name,
    /// IPv6 in brackets or not).
    pub(crate) fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.domain {
            Some(name) => Ok(name.clone()),
            None => server_name(host.trim_start_matches('[').trim_end_matches(']')),
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("domain", &self.domain)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Whether the server's alert is about the client certificate. Go sends `BadCertificate`
/// both for a missing one (before Go 1.21) and for one it cannot verify.
pub(crate) fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }

    #[test]
    fn a_ca_makes_a_connector_offering_h2() {
        let connector = TlsConfig::new()
            .ca_certificate(ca())
            .connector()
            .expect("valid");
        assert_eq!(connector.config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!connector.identity);
        let name = connector.server_name("127.0.0.1").expect("an ip");
        assert!(matches!(name, ServerName::IpAddress(_)));
        let name = connector.server_name("[::1]").expect("an ipv6 address");
        assert!(matches!(name, ServerName::IpAddress(_)));
    }

    #[test]
    fn the_domain_name_overrides_the_host() {
        let connector = TlsConfig::new()
            .ca_certificate(ca())
            .domain_name("greeter.internal")
            .connector()
            .expect("valid");
        let name = connector.server_name("127.0.0.1").expect("the override");
        assert!(matches!(name, ServerName::DnsName(n) if n.as_ref() == "greeter.internal"));
    }

    #[test]
    fn an_invalid_configuration_says_what_is_wrong() {
        let reason = TlsConfig::new().connector().unwrap_err();
        assert!(reason.contains("no ca certificate"), "{reason}");
        let reason = TlsConfig::new()
            .ca_certificate("not pem")
            .connector()
            .unwrap_err();
        assert!(
            reason.contains("the ca certificate holds no PEM"),
            "{reason}"
        );
        let reason = TlsConfig::new()
            .ca_certificate(ca())
            .identity(ca(), "no key")
            .connector()
            .unwrap_err();
        assert!(reason.contains("the client key"), "{reason}");
        let reason = TlsConfig::new()
            .ca_certificate(ca())
            .domain_name("not a name!")
            .connector()
            .unwrap_err();
        assert!(reason.contains("not a valid dns name"), "{reason}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let config = TlsConfig::new().identity("cert", "SECRET KEY");
        assert!(!format!("{config:?}").contains("SECRET"));
    }
}
