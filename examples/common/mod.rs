//! What the two greeter examples share: the generated code, the etcd flags, and logging.

#![allow(dead_code)] // each example uses a part

use std::time::Duration;

use clap::ValueEnum;
use tonic_etcd::etcd_client::{Client, ConnectOptions};
use tonic_etcd::{Blog, EtcdNaming, Format, GoZero, Kratos};

/// The code generated from `proto/helloworld.proto`.
pub mod pb {
    tonic::include_proto!("helloworld");
}

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

/// Connects to etcd and checks that it answers within a few seconds.
pub async fn connect(list: &str) -> Result<Client, String> {
    let endpoints = endpoints(list);
    if endpoints.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    let connect = Client::connect(&endpoints, Some(options));
    let mut client = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| format!("etcd at {list} did not answer in 5 s"))?
        .map_err(|e| format!("cannot connect to etcd at {list}: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), client.status()).await {
            Ok(Ok(_)) => return Ok(client),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("etcd at {list} is unreachable: {e}"));
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("etcd at {list} did not answer in 5 s"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Sends logs to stderr, filtered by `RUST_LOG` (default: warnings), so stdout carries only
/// the lines of the command-line contract.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
