//! What the two greeter examples share: the generated code, the etcd flags (endpoints, TLS,
//! credentials), and logging.

#![allow(dead_code)] // each example uses a part

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use tonic_etcd::etcd_client::Client;
use tonic_etcd::{Blog, Error, EtcdConfig, EtcdNaming, Format, GoZero, Kratos};

/// The code generated from the greeter proto (crates/greeter/proto/helloworld.proto).
pub use hello_world as pb;

/// The etcd endpoints used when neither `--etcd` nor `$ETCD_ENDPOINTS` is given.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// Exit code for bad usage or an etcd that cannot be reached at start.
pub const EXIT_USAGE: i32 = 2;

/// The registry wire format (`--format`), and what `--service` means in it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// etcd's Go naming convention: `--service` is the target, keys `<target>/<addr>`,
    /// values `{"Op":0,"Addr":"host:port","Metadata":null}`.
    EtcdNaming,
    /// go-zero: `--service` is the go-zero key, keys `<key>/<lease id>`, values `host:port`.
    GoZero,
    /// Kratos: `--service` is the service name, keys `/microservices/<name>/<addr>`, values
    /// Kratos's `ServiceInstance` JSON.
    Kratos,
    /// The blog post's format: `--service` is the name, keys `services/<name>/<addr>`,
    /// values `{"ID":0,"IP":"host:port"}`.
    Blog,
}

impl FormatArg {
    /// The library format this flag names.
    pub fn format(self) -> Box<dyn Format> {
        match self {
            FormatArg::EtcdNaming => Box::new(EtcdNaming),
            FormatArg::GoZero => Box::new(GoZero::new()),
            FormatArg::Kratos => Box::new(Kratos::new()),
            FormatArg::Blog => Box::new(Blog::new()),
        }
    }
}

/// Splits a comma-separated endpoint list, dropping empty items.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How to reach etcd: the flags both examples share.
///
/// The TLS flags exist in every build, and fail with a clear message when the examples are
/// built without the `tls` feature (`cargo run --features tls --example ...`).
#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated; `https://` ones need the `tls` feature.
    #[arg(long, env = "ETCD_ENDPOINTS", default_value = DEFAULT_ETCD)]
    pub etcd: String,
    /// The CA certificate (PEM file) that signs etcd's certificate.
    #[arg(long, value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate (PEM file) for an etcd run with --client-cert-auth.
    #[arg(long, value_name = "PEM", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM file) of --etcd-cert.
    #[arg(long, value_name = "PEM", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user, for an etcd with authentication enabled.
    #[arg(long, env = "ETCD_USERNAME")]
    pub etcd_user: Option<String>,
    /// The password of --etcd-user.
    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

/// Connects to etcd and checks, within a few seconds, that it answers and accepts the
/// credentials and certificates given. The message says what to fix.
pub async fn connect(args: &EtcdArgs) -> Result<Client, String> {
    let endpoints = endpoints(&args.etcd);
    if endpoints.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    let mut config = EtcdConfig::new(endpoints)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .deadline(Duration::from_secs(5));
    match (&args.etcd_user, &args.etcd_password) {
        (Some(user), Some(password)) => config = config.user(user, password),
        (Some(_), None) => return Err("--etcd-user needs --etcd-password or $ETCD_PASSWORD".into()),
        (None, Some(_)) => return Err("--etcd-password needs --etcd-user or $ETCD_USERNAME".into()),
        (None, None) => {}
    }
    let config = etcd_tls(config, args)?;
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
fn etcd_tls(mut config: EtcdConfig, args: &EtcdArgs) -> Result<EtcdConfig, String> {
    if let Some(ca) = &args.etcd_ca {
        config = config.ca_certificate(read_pem(ca, "--etcd-ca")?);
    }
    if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
        config = config.identity(read_pem(cert, "--etcd-cert")?, read_pem(key, "--etcd-key")?);
    }
    Ok(config)
}

#[cfg(not(feature = "tls"))]
fn etcd_tls(config: EtcdConfig, args: &EtcdArgs) -> Result<EtcdConfig, String> {
    let flags = [
        ("--etcd-ca", args.etcd_ca.is_some()),
        ("--etcd-cert", args.etcd_cert.is_some()),
    ];
    match flags.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(without_tls(flag)),
        None => Ok(config),
    }
}

/// The message for a TLS flag given to an example built without the `tls` feature.
pub fn without_tls(flag: &str) -> String {
    format!("{flag} needs the `tls` feature: cargo run --features tls --example ...")
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

/// Sends logs to stderr, filtered by `RUST_LOG` (default: warnings), so stdout carries only
/// the lines of the command-line contract. Colours only when stderr is a terminal and
/// `NO_COLOR` is not set, so logs written to a file carry no escape codes.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// `--metrics-addr`: both examples serve their metrics in Prometheus's text format.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// Serve the crate's metrics (tonic_etcd::metrics, docs/metrics.md) in Prometheus's text
    /// format over HTTP at this address, such as 127.0.0.1:9100 (any path). Needs the
    /// `metrics` feature. Default: no metrics.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Installs the Prometheus exporter and its HTTP listener, if `--metrics-addr` is given.
/// Must run inside the tokio runtime, which then serves the scrapes.
#[cfg(feature = "metrics")]
pub fn serve_metrics(args: &MetricsArgs) -> Result<(), String> {
    let Some(addr) = args.metrics_addr else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("--metrics-addr {addr}: {}", chain(&e)))?;
    tonic_etcd::metrics::describe();
    tracing::info!(%addr, "serving metrics");
    Ok(())
}

#[cfg(not(feature = "metrics"))]
pub fn serve_metrics(args: &MetricsArgs) -> Result<(), String> {
    match args.metrics_addr {
        Some(_) => Err(
            "--metrics-addr needs the `metrics` feature: cargo run --features metrics --example ..."
                .into(),
        ),
        None => Ok(()),
    }
}
