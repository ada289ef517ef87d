//! Certificates made at test time: a CA, a server certificate for loopback, and client
//! certificates, as PEM text and as files for the processes that want paths.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its private key, in PEM, with the files that hold them.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The file holding `cert_pem`.
    pub cert_file: PathBuf,
    /// The file holding `key_pem`.
    pub key_file: PathBuf,
}

/// A private test PKI: one CA, a server certificate valid for `127.0.0.1`, `::1` and
/// `localhost`, and a client certificate whose common name is `root`.
///
/// Every file lives in a temporary directory removed on `Drop`.
#[derive(Debug)]
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The file holding `ca_pem`.
    pub ca_file: PathBuf,
    /// The server certificate (server and client auth), signed by the CA.
    pub server: CertPair,
    /// A client certificate with common name `root`, signed by the CA.
    pub client: CertPair,
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
}

impl TestPki {
    /// Makes a fresh CA and its server and client certificates, and writes them to files.
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("tonic-etcd-pki-")
            .tempdir()
            .expect("create a temporary directory for certificates");
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tonic-etcd test ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&key).expect("self-sign the CA").pem();
        let ca_file = write(dir.path(), "ca.pem", &ca_pem);
        let issuer = Issuer::new(params, key);
        let server_names = ["127.0.0.1", "::1", "localhost"].map(str::to_owned);
        let server = issue(
            &issuer,
            dir.path(),
            "server",
            "tonic-etcd test server",
            &server_names,
        );
        let client = issue(&issuer, dir.path(), "client", "root", &[]);
        TestPki {
            ca_pem,
            ca_file,
            server,
            client,
            issuer,
            dir,
        }
    }

    /// Issues a certificate signed by this CA, usable for both server and client auth, with
    /// common name `common_name` and the given subject alternative names. `name` names its
    /// files.
    pub fn issue(&self, name: &str, common_name: &str, alt_names: &[String]) -> CertPair {
        issue(&self.issuer, self.dir.path(), name, common_name, alt_names)
    }

    /// The directory that holds the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Issues a certificate for server and client auth, signed by `issuer`, into `dir`.
fn issue(
    issuer: &Issuer<'static, KeyPair>,
    dir: &Path,
    name: &str,
    common_name: &str,
    alt_names: &[String],
) -> CertPair {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = CertificateParams::new(alt_names.to_vec()).expect("valid names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert_pem = params
        .signed_by(&key, issuer)
        .expect("sign a certificate")
        .pem();
    let key_pem = key.serialize_pem();
    CertPair {
        cert_file: write(dir, &format!("{name}.pem"), &cert_pem),
        key_file: write(dir, &format!("{name}-key.pem"), &key_pem),
        cert_pem,
        key_pem,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
