//! A greeter server that registers itself in etcd.
//!
//! Run it against a local etcd (`make demo` starts one and runs three of these):
//!
//! ```text
//! cargo run --example greeter_server -- --etcd http://127.0.0.1:2379 --service greeter
//! ```
//!
//! It prints one line once it is listening and registered, with its real address first:
//! `listening on 127.0.0.1:41234 registered as greeter/127.0.0.1:41234 lease 7587...`.
//! `--format etcd-naming|go-zero|kratos|blog` chooses the wire format (default
//! `etcd-naming`); `--service` means what the format means: the etcd naming target, the
//! go-zero key, or the Kratos or blog service name.
//! Each reply names the server that answered: `Hello, <name>! (from <addr>)`. It serves
//! grpc.health.v1 too (`SERVING`), for `tonic-etcd probe`.
//! On SIGTERM or SIGINT it deregisters, waits `--grace` seconds, drains in-flight calls and
//! exits 0.
//!
//! Security (the TLS flags need `--features tls`): `--etcd-ca`, `--etcd-cert` and
//! `--etcd-key` for an etcd served over `https://`, `--etcd-user` and `--etcd-password` (or
//! `$ETCD_USERNAME` and `$ETCD_PASSWORD`) for one with authentication enabled. Credentials
//! or certificates that etcd refuses make it exit 2 at once, saying so. `--tls-cert` and
//! `--tls-key` serve TLS:
//!
//! ```text
//! cargo run --features tls --example greeter_server -- --etcd https://127.0.0.1:2379 \
//!     --etcd-ca ca.pem --etcd-cert client.pem --etcd-key client-key.pem \
//!     --tls-cert server.pem --tls-key server-key.pem --format kratos
//! ```

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::chain;
use common::pb::greeter_server::{Greeter, GreeterServer};
use common::pb::{HelloReply, HelloRequest};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_etcd::{Instance, Registrar};

/// Serves the greeter and registers it in etcd under --service until SIGTERM or SIGINT.
///
/// It listens on --addr, registers that address under a lease of --ttl seconds kept alive
/// by tonic-etcd's registrar, and answers `Hello, <name>! (from <addr>)`. On SIGTERM or
/// SIGINT it deregisters, waits --grace seconds, drains in-flight calls and exits. Logs go
/// to stderr (RUST_LOG, default warn).
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Prints, on stdout, one line once it is listening and registered:\n  \
        listening on <ip:port> registered as <key> lease <id>\n\n\
        Exit codes:\n  \
        0  stopped by SIGTERM or SIGINT, deregistered and drained\n  \
        2  bad usage, etcd unreachable or refusing the credentials at start, the address \
        cannot be bound, registration refused, or the server failed"
)]
struct Args {
    #[command(flatten)]
    etcd: common::EtcdArgs,
    /// The service to register as, as `--format` means it: the etcd naming target (keys
    /// `<service>/<addr>`), the go-zero key (`<service>/<lease id>`), or the Kratos
    /// (`/microservices/<service>/<addr>`) or blog (`services/<service>/<addr>`) name.
    #[arg(long, default_value = "greeter")]
    service: String,
    /// The registry wire format.
    #[arg(long, value_enum, default_value_t = common::FormatArg::EtcdNaming)]
    format: common::FormatArg,
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// The address to register, for clients to dial, when it is not the one listened on;
    /// needed when --addr is 0.0.0.0 or [::]. Default: the address listened on.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The lease TTL in seconds (at least 2): how long the key outlives a crash.
    #[arg(long, default_value_t = 10)]
    ttl: u64,
    /// Seconds to wait after deregistering before refusing new calls.
    #[arg(long, default_value_t = 1.0)]
    grace: f64,
    /// Serve TLS with this certificate chain (PEM file), with --tls-key. The instance is
    /// registered as TLS where the format can say so (kratos: `grpcs://`); clients of the
    /// other formats must be told (greeter_client --tls-ca).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM file) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The weight to register in the instance's metadata (the crate's balancer sends calls in
    /// proportion to it); none by default.
    #[arg(long)]
    weight: Option<u32>,
    /// The zone to register in the instance's metadata; none by default.
    #[arg(long)]
    zone: Option<String>,
    #[command(flatten)]
    metrics: common::MetricsArgs,
}

/// The instance to register for `addr`, with the metadata given by the flags.
fn instance(args: &Args, addr: SocketAddr) -> Instance {
    let mut instance = advertised(args, addr).tls(args.tls_cert.is_some());
    if let Some(weight) = args.weight {
        instance = instance.weight(weight);
    }
    if let Some(zone) = &args.zone {
        instance = instance.zone(zone.clone());
    }
    instance
}

struct MyGreeter {
    addr: SocketAddr,
}

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        let message = format!("Hello, {name}! (from {})", self.addr);
        Ok(Response::new(HelloReply { message }))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("greeter_server: {message}");
            ExitCode::from(common::EXIT_USAGE as u8)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.ttl < 2 {
        return Err(format!(
            "--ttl {} is below the minimum of 2 seconds",
            args.ttl
        ));
    }
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        return Err(format!("--grace {} is not a number of seconds", args.grace));
    }
    check_registration(&args)?;
    common::serve_metrics(&args.metrics)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let builder = server_builder(&args)?;
    let etcd = common::connect(&args.etcd).await?;
    let incoming = TcpIncoming::bind(args.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?
        // Without it, small replies wait for the peer's delayed ACK: 40 ms stalls.
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().map_err(|e| e.to_string())?;
    let registration = Registrar::new(etcd)
        .ttl(Duration::from_secs(args.ttl))
        .grace(Duration::from_secs_f64(args.grace))
        .format(args.format.format())
        .register(&args.service, instance(&args, addr))
        .await
        .map_err(|e| format!("cannot register: {}", chain(&e)))?;
    // grpc.health.v1 for probes (`tonic-etcd probe`): SERVING for "" and helloworld.Greeter.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GreeterServer<MyGreeter>>().await;
    let server = builder
        .layer(registration.layer())
        .add_service(health_service)
        .add_service(GreeterServer::new(MyGreeter { addr }))
        .serve_with_incoming_shutdown(incoming, registration.stop_signal());
    let mut server = tokio::spawn(server);
    println!(
        "listening on {addr} registered as {} lease {}",
        registration.key(),
        registration.lease_id().unwrap_or_default()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        result = &mut server => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("server failed: {}", chain(&e))),
                Err(e) => Err(format!("server task failed: {e}")),
            };
        }
    }
    if let Err(e) = registration.shutdown().await {
        eprintln!(
            "greeter_server: deregistering failed, the key expires with its lease: {}",
            chain(&e)
        );
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server failed while draining: {}", chain(&e))),
        Err(e) => Err(format!("server task failed: {e}")),
    }
}

/// Refuses, before any I/O, what the registrar would: a service name that names no service,
/// an address clients cannot dial.
fn check_registration(args: &Args) -> Result<(), String> {
    use tonic_etcd::{check_instance, check_service};
    check_service(&args.format.format(), &args.service).map_err(|e| format!("--service: {e}"))?;
    match &args.advertise {
        Some(advertise) => check_instance(&Instance::new(advertise.as_str()))
            .map_err(|e| format!("--advertise: {e}")),
        None if args.addr.ip().is_unspecified() => Err(format!(
            "--addr {} listens on every interface, which clients cannot dial: give --advertise HOST:PORT, the address they should use",
            args.addr
        )),
        None => Ok(()),
    }
}

/// The instance to register: --advertise, or else the address listened on.
fn advertised(args: &Args, listening: SocketAddr) -> Instance {
    match &args.advertise {
        Some(advertise) => Instance::new(advertise.as_str()),
        None => Instance::from(listening),
    }
}

/// A server builder, serving TLS if --tls-cert and --tls-key are given.
#[cfg(feature = "tls")]
fn server_builder(args: &Args) -> Result<Server, String> {
    use tonic::transport::{Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(Server::builder());
    };
    let cert = common::read_pem(cert, "--tls-cert")?;
    let key = common::read_pem(key, "--tls-key")?;
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    Server::builder()
        .tls_config(tls)
        .map_err(|e| format!("--tls-cert/--tls-key: {}", chain(&e)))
}

/// A server builder; TLS needs the `tls` feature.
#[cfg(not(feature = "tls"))]
fn server_builder(args: &Args) -> Result<Server, String> {
    match args.tls_cert {
        Some(_) => Err(common::without_tls("--tls-cert")),
        None => Ok(Server::builder()),
    }
}
