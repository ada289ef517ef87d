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
//! Each reply names the server that answered: `Hello, <name>! (from <addr>)`.
//! On SIGTERM or SIGINT it deregisters, waits `--grace` seconds, drains in-flight calls and
//! exits 0.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::pb::greeter_server::{Greeter, GreeterServer};
use common::pb::{HelloReply, HelloRequest};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_etcd::Registrar;

/// A greeter server that registers itself in etcd and deregisters on SIGTERM.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "ETCD_ENDPOINTS", default_value = common::DEFAULT_ETCD)]
    etcd: String,
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
    /// The lease TTL in seconds (at least 2): how long the key outlives a crash.
    #[arg(long, default_value_t = 10)]
    ttl: u64,
    /// Seconds to wait after deregistering before refusing new calls.
    #[arg(long, default_value_t = 1.0)]
    grace: f64,
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
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
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
        .register(&args.service, addr)
        .await
        .map_err(|e| format!("cannot register: {}", chain(&e)))?;
    let server = Server::builder()
        .layer(registration.layer())
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

/// An error with its causes.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
