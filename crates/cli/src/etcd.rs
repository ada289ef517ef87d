//! How to reach etcd: the same flags and environment variables as the greeter examples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic_etcd::etcd_client::Client;
use tonic_etcd::{Error, EtcdConfig};

/// The etcd endpoints used when neither `--etcd` nor `$ETCD_ENDPOINTS` is given.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// The etcd flags, accepted before or after the subcommand.
#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, global = true, env = "ETCD_ENDPOINTS", default_value = DEFAULT_ETCD)]
    pub etcd: String,
    /// The CA certificate (PEM file) that signs etcd's certificate.
    #[arg(long, global = true, value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate (PEM file) for an etcd run with --client-cert-auth.
    #[arg(long, global = true, value_name = "PEM", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM file) of --etcd-cert.
    #[arg(long, global = true, value_name = "PEM", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user, for an etcd with authentication enabled.
    #[arg(long, global = true, env = "ETCD_USERNAME")]
    pub etcd_user: Option<String>,
    /// The password of --etcd-user.
    #[arg(long, global = true, env = "ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

/// Connects to etcd and checks, within a few seconds, that it answers and accepts the
/// credentials and certificates given. The message says what to fix.
pub async fn connect(args: &EtcdArgs) -> Result<Client, String> {
    let endpoints: Vec<String> = args
        .etcd
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err("no etcd endpoint given (--etcd or $ETCD_ENDPOINTS)".into());
    }
    let mut config = EtcdConfig::new(endpoints)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(5));
    match (&args.etcd_user, &args.etcd_password) {
        (Some(user), Some(password)) => config = config.user(user, password),
        (Some(_), None) => return Err("--etcd-user needs --etcd-password or $ETCD_PASSWORD".into()),
        (None, Some(_)) => return Err("--etcd-password needs --etcd-user or $ETCD_USERNAME".into()),
        (None, None) => {}
    }
    let config = tls(config, args)?;
    config.connect().await.map_err(|error| {
        let hint = match &error {
            Error::AuthRequired { .. } => " (give --etcd-user and --etcd-password)",
            Error::Timeout { .. } => " (is etcd running there?)",
            _ => "",
        };
        format!("{}{hint}", chain(&error))
    })
}

#[cfg(feature = "tls")]
fn tls(mut config: EtcdConfig, args: &EtcdArgs) -> Result<EtcdConfig, String> {
    if let Some(ca) = &args.etcd_ca {
        config = config.ca_certificate(read_pem(ca, "--etcd-ca")?);
    }
    if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
        config = config.identity(read_pem(cert, "--etcd-cert")?, read_pem(key, "--etcd-key")?);
    }
    Ok(config)
}

#[cfg(not(feature = "tls"))]
fn tls(config: EtcdConfig, args: &EtcdArgs) -> Result<EtcdConfig, String> {
    match (&args.etcd_ca, &args.etcd_cert) {
        (None, None) => Ok(config),
        _ => Err("--etcd-ca and --etcd-cert need the `tls` feature (on by default)".into()),
    }
}

/// Reads a PEM file named by `flag`.
pub fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// An error with its causes, `outer: inner: root`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
