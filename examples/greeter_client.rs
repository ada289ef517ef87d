//! A greeter client that finds its servers in etcd and spreads calls over them.
//!
//! Run it against servers registered by `greeter_server` (`make demo` does both):
//!
//! ```text
//! cargo run --example greeter_client -- --etcd http://127.0.0.1:2379 --service greeter --requests 300
//! ```
//!
//! It ends with one JSON line on stdout:
//! `{"ok":N,"failed":M,"backends":{"<addr>":count,...},"p50_ms":x,"p99_ms":y}`.
//! Exit code: 0 if every call succeeded, 1 if any failed, 2 on bad usage or when etcd is
//! unreachable at start.
//!
//! Security (the TLS flags need `--features tls`): the etcd flags of `greeter_server`
//! (`--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password`), with the
//! same exit 2 when etcd refuses them. `--tls-ca` calls every server over TLS, trusting that
//! CA, because most formats cannot say that a server speaks TLS; `--tls-domain` names the
//! name its certificate must be valid for:
//!
//! ```text
//! cargo run --features tls --example greeter_client -- --etcd https://127.0.0.1:2379 \
//!     --etcd-ca ca.pem --etcd-cert client.pem --etcd-key client-key.pem --tls-ca ca.pem
//! ```

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};
use common::pb::HelloRequest;
use common::pb::greeter_client::GreeterClient;
use tokio::time::Instant;
use tower::ServiceExt;

/// Either balancer, behind one type. (The error is a concrete `Status` rather than a boxed
/// error, which keeps the spawned workers' futures provably `Send`.)
type AnyChannel = tower::util::BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::Status,
>;
use tonic_etcd::{DiscoveryStatus, EtcdDiscover};

/// Calls the greeter servers registered in etcd under --service, balancing over them.
///
/// It finds the servers with tonic-etcd's discovery (list, then watch), spreads --requests
/// calls (or calls for --duration seconds) over them, --concurrency at a time, then prints
/// one JSON summary line on stdout. Logs go to stderr (RUST_LOG, default warn).
#[derive(Parser, Debug)]
#[command(
    version,
    group(ArgGroup::new("amount").args(["requests", "duration"])),
    after_help = "Prints, on stdout, one line when done:\n  \
        {\"ok\":N,\"failed\":M,\"backends\":{\"<addr>\":count,...},\"p50_ms\":x,\"p99_ms\":y}\n\n\
        Exit codes:\n  \
        0  every call succeeded\n  \
        1  some call failed\n  \
        2  bad usage, or etcd unreachable or refusing the credentials at start"
)]
struct Args {
    #[command(flatten)]
    etcd: common::EtcdArgs,
    /// The service to call, as `--format` means it: the etcd naming target (servers are the
    /// keys under `<service>/`), the go-zero key, or the Kratos or blog service name.
    #[arg(long, default_value = "greeter")]
    service: String,
    /// How many calls to make in all (default 100, unless --duration is given).
    #[arg(long)]
    requests: Option<u64>,
    /// Keep calling for this many seconds instead of a fixed number of calls.
    #[arg(long)]
    duration: Option<f64>,
    /// How many calls to keep in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Which balancer spreads the calls: the crate's own (health- and load-aware), or
    /// tonic's `balance_channel`, for side-by-side runs.
    #[arg(long, value_enum, default_value_t = BalancerArg::Etcd)]
    balancer: BalancerArg,
    /// The registry wire format.
    #[arg(long, value_enum, default_value_t = common::FormatArg::EtcdNaming)]
    format: common::FormatArg,
    /// Seconds a single call may take.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Call every server over TLS, trusting this CA certificate (PEM file). Without it,
    /// only servers registered as TLS (kratos `grpcs://`) are called over TLS.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The name the servers' certificates must be valid for (default: each server's
    /// registered host, usually an IP address).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// Retry calls that failed with one of these status codes, on another server, under a
    /// gRPC retry policy with retry throttling (comma-separated names or numbers:
    /// `unavailable,internal`), with the crate's own balancer. Default: none; calls that
    /// never left are retried anyway.
    #[arg(long, value_name = "CODES", value_delimiter = ',', value_parser = parse_code)]
    retry_codes: Vec<tonic::Code>,
    /// The most attempts of a call under --retry-codes, the first included.
    #[arg(long, default_value_t = 4, requires = "retry_codes",
          value_parser = clap::value_parser!(u32).range(1..=5))]
    retry_attempts: u32,
    #[command(flatten)]
    metrics: common::MetricsArgs,
}

/// A status code as --retry-codes gives it.
fn parse_code(text: &str) -> Result<tonic::Code, String> {
    tonic_etcd::parse_code(text).ok_or_else(|| format!("{text:?} is not a gRPC status code"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalancerArg {
    /// tonic-etcd's balancer: ejects dead endpoints, avoids slow ones, fails fast.
    Etcd,
    /// tonic's own `Channel::balance_channel`.
    Tonic,
}

/// When the calls stop.
#[derive(Clone, Copy)]
enum Budget {
    Requests(u64),
    Until(Instant),
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    backends: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    let budget = match (args.requests, args.duration) {
        (_, Some(secs)) if !(secs.is_finite() && secs > 0.0) => {
            eprintln!("greeter_client: --duration {secs} is not a positive number of seconds");
            return ExitCode::from(common::EXIT_USAGE as u8);
        }
        (_, Some(secs)) => Budget::Until(Instant::now() + Duration::from_secs_f64(secs)),
        (requests, None) => Budget::Requests(requests.unwrap_or(100)),
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!(
            "greeter_client: --timeout {} is not a positive number of seconds",
            args.timeout
        );
        return ExitCode::from(common::EXIT_USAGE as u8);
    }
    if matches!(args.balancer, BalancerArg::Tonic) && !args.retry_codes.is_empty() {
        eprintln!(
            "greeter_client: --retry-codes and --retry-attempts apply only to the crate's balancer (--balancer etcd), not to tonic's"
        );
        return ExitCode::from(common::EXIT_USAGE as u8);
    }
    if let Err(message) = common::serve_metrics(&args.metrics) {
        eprintln!("greeter_client: {message}");
        return ExitCode::from(common::EXIT_USAGE as u8);
    }
    let format = args.format.format();
    if let Err(error) = tonic_etcd::check_service(&format, &args.service) {
        eprintln!("greeter_client: --service: {error}");
        return ExitCode::from(common::EXIT_USAGE as u8);
    }
    let etcd = match common::connect(&args.etcd).await {
        Ok(etcd) => etcd,
        Err(message) => {
            eprintln!("greeter_client: {message}");
            return ExitCode::from(common::EXIT_USAGE as u8);
        }
    };
    let discover = EtcdDiscover::new(etcd, &args.service).format(format);
    let discover = match backend_tls(discover, &args) {
        Ok(discover) => discover,
        Err(message) => {
            eprintln!("greeter_client: {message}");
            return ExitCode::from(common::EXIT_USAGE as u8);
        }
    };
    let (channel, discovery) = match args.balancer {
        BalancerArg::Etcd => {
            let policy = tonic_etcd::RetryPolicy::default()
                .retryable_codes(args.retry_codes.iter().copied())
                .max_attempts(args.retry_attempts);
            let channel = match args.retry_codes.is_empty() {
                true => discover.channel(),
                false => tonic_etcd::Balancer::new()
                    .retry_policy("/", policy)
                    .channel(discover),
            };
            let status = channel.status();
            let channel = AnyChannel::new(channel.map_err(tonic::Status::from_error));
            (channel, (status, None))
        }
        BalancerArg::Tonic => {
            let (channel, handle) = discover.balance_channel();
            let channel = channel.map_err(|e| tonic::Status::from_error(Box::new(e)));
            let channel = AnyChannel::new(channel);
            (channel, (handle.status(), Some(handle)))
        }
    };
    let (status, handle) = discovery;
    wait_for_sync(status).await;
    let timeout = Duration::from_secs_f64(args.timeout);
    let tally = run(channel, budget, args.concurrency, timeout).await;
    if let Some(handle) = handle {
        handle.stop().await;
    }
    println!("{}", summary(&tally));
    if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// TLS to every server, if --tls-ca is given.
#[cfg(feature = "tls")]
fn backend_tls(discover: EtcdDiscover, args: &Args) -> Result<EtcdDiscover, String> {
    let Some(ca) = &args.tls_ca else {
        return Ok(discover);
    };
    let ca = common::read_pem(ca, "--tls-ca")?;
    let mut tls = tonic_etcd::TlsConfig::new().ca_certificate(ca);
    if let Some(domain) = &args.tls_domain {
        tls = tls.domain_name(domain);
    }
    Ok(discover.tls_config(tls))
}

/// TLS to the servers needs the `tls` feature.
#[cfg(not(feature = "tls"))]
fn backend_tls(discover: EtcdDiscover, args: &Args) -> Result<EtcdDiscover, String> {
    match args.tls_ca {
        Some(_) => Err(common::without_tls("--tls-ca")),
        None => Ok(discover),
    }
}

/// Waits a little for the first listing, so the first calls have somewhere to go.
async fn wait_for_sync(mut status: tokio::sync::watch::Receiver<DiscoveryStatus>) {
    let synced = status.wait_for(|s| !matches!(s, DiscoveryStatus::Syncing));
    let _ = tokio::time::timeout(Duration::from_secs(5), synced).await;
}

async fn run(channel: AnyChannel, budget: Budget, concurrency: u64, timeout: Duration) -> Tally {
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = GreeterClient::new(channel.clone());
            tokio::spawn(worker(client, budget, issued.clone(), timeout))
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        let Ok(part) = worker.await else {
            tally.failed += 1;
            continue;
        };
        tally.ok += part.ok;
        tally.failed += part.failed;
        tally.latencies.extend(part.latencies);
        for (backend, count) in part.backends {
            *tally.backends.entry(backend).or_default() += count;
        }
    }
    tally
}

async fn worker(
    mut client: GreeterClient<AnyChannel>,
    budget: Budget,
    issued: Arc<AtomicU64>,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        match budget {
            Budget::Requests(n) if issued.fetch_add(1, Ordering::Relaxed) >= n => break,
            Budget::Until(end) if Instant::now() >= end => break,
            _ => {}
        }
        let request = HelloRequest {
            name: "world".into(),
        };
        let started = Instant::now();
        let reply = tokio::time::timeout(timeout, client.say_hello(request)).await;
        tally.latencies.push(started.elapsed());
        match reply {
            Ok(Ok(reply)) => {
                tally.ok += 1;
                let backend = backend_of(&reply.into_inner().message);
                *tally.backends.entry(backend).or_default() += 1;
            }
            Ok(Err(status)) => {
                tally.failed += 1;
                tracing::warn!(code = ?status.code(), message = status.message(), "call failed");
            }
            Err(_) => {
                tally.failed += 1;
                tracing::warn!(?timeout, "call timed out");
            }
        }
    }
    tally
}

/// The server address in `Hello, <name>! (from <addr>)`.
fn backend_of(message: &str) -> String {
    message
        .rsplit_once("(from ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or("unknown")
        .to_owned()
}

fn summary(tally: &Tally) -> String {
    let mut latencies = tally.latencies.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        (latencies[rank - 1].as_secs_f64() * 1e6).round() / 1e3
    };
    // Written by hand to keep the contract's key order: ok, failed, backends, p50_ms, p99_ms.
    let backends = serde_json::to_string(&tally.backends).expect("a map of strings to numbers");
    format!(
        r#"{{"ok":{},"failed":{},"backends":{backends},"p50_ms":{},"p99_ms":{}}}"#,
        tally.ok,
        tally.failed,
        serde_json::Value::from(percentile(0.50)),
        serde_json::Value::from(percentile(0.99)),
    )
}
